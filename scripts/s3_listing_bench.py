"""Listing an ``s3://`` prefix of many keys, against moto's S3 server on 127.0.0.1.

    .venv/bin/python scripts/s3_listing_bench.py KEYS [--prefixes P]

Puts KEYS small objects under P sub-prefixes of one prefix, then times
s3fs's own ``find`` (one paged listing), labeler's per-sub-prefix listing
(:func:`labeler.io.prefix_listing.iter_remote`) and the whole stored
listing (:func:`labeler.outdir.listing.store_listing`: list, sort, write parts)
into a local OUT. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("keys", type=int)
    parser.add_argument("--prefixes", type=int, default=100)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")

    from labeler.io import prefix_listing, storage
    from labeler.io.sources import read_source
    from labeler.outdir.listing import store_listing

    fs, _ = storage.filesystem("s3://bench")
    fs.mkdir("bench")
    started = time.monotonic()
    names = [f"bench/photos/{n % args.prefixes:04d}/{n:09d}.jpg" for n in range(args.keys)]
    for start in range(0, len(names), 5000):
        fs.pipe({name: b"x" for name in names[start:start + 5000]})
    put_s = time.monotonic() - started

    fs.invalidate_cache()
    started = time.monotonic()
    found = len(fs.find("bench/photos/"))
    find_s = time.monotonic() - started

    fs.invalidate_cache()
    started = time.monotonic()
    listed = sum(len(batch) for batch in prefix_listing.iter_remote("s3://bench/photos/", lambda name: True))
    parallel_s = time.monotonic() - started

    with tempfile.TemporaryDirectory() as out:
        fs.invalidate_cache()
        started = time.monotonic()
        listing = store_listing(out, read_source("s3://bench/photos/"))
        stored_s = time.monotonic() - started
    server.stop()
    assert found == listed == listing.images == args.keys, (found, listed, listing.images)
    print(json.dumps({
        "keys": args.keys, "sub_prefixes": args.prefixes, "put_s": round(put_s, 1),
        "s3fs_find_s": round(find_s, 2), "labeler_parallel_listing_s": round(parallel_s, 2),
        "store_listing_s": round(stored_s, 2), "listing_parts": listing.parts,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
