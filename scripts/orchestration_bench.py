"""The cost of ``labeler run`` apart from the models, at a given number of images.

    .venv/bin/python scripts/orchestration_bench.py ENTRIES [--real N] [--work DIR]

Writes a ``.txt`` source of ENTRIES lines: N real small images (generated)
and the rest URIs that do not exist, so they end as error rows through the
whole pipeline (read, both model stages, write) with no model work. Runs
``labeler run`` with ``random:tiny`` models in this process, on a local Ray,
and prints one JSON line: wall time, CPU seconds used on the whole machine
(every Ray worker included, from /proc/stat) and per row, the driver's peak
RSS, listing parts (the pipeline's first blocks), shards, and the time spent
after the last image was labelled (from run.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("entries", type=int)
    parser.add_argument("--real", type=int, default=20)
    parser.add_argument("--work", default="/tmp/labeler-orchestration")
    args = parser.parse_args()

    from labeler.bank.build import build_bank
    from labeler.run.config import RunConfig
    from labeler.run.driver import run_labeling
    from labeler.synthetic import generate_dataset

    work = Path(args.work) / str(args.entries)
    shutil.rmtree(work, ignore_errors=True)
    refs = generate_dataset(work / "refs", 4, seed=1)
    bank = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", sam2="random:tiny", device="cpu")
    bank.save(str(work / "bank.safetensors"))
    real = sorted((generate_dataset(work / "targets", args.real, seed=2, image_format="jpg").parent / "images")
                  .rglob("*.jpg")) if args.real else []
    with open(work / "list.txt", "w") as listing:
        for image in real:
            listing.write(f"{image}\n")
        for n in range(args.entries - len(real)):
            listing.write(f"{work}/missing/{n:09d}.jpg\n")

    config = RunConfig(bank=str(work / "bank.safetensors"), images=str(work / "list.txt"), out=str(work / "out"),
                       sam2="random:tiny", points_per_side=4)
    cpu, started = machine_cpu_seconds(), time.monotonic()
    summary = run_labeling(config)
    wall, cpu = time.monotonic() - started, machine_cpu_seconds() - cpu
    manifest = json.loads((work / "out" / "run.json").read_text())
    print(json.dumps({
        "entries": args.entries,
        "real_images": len(real),
        "wall_s": round(wall, 1),
        "machine_cpu_s": round(cpu, 1),
        "cpu_ms_per_row": round(1000 * cpu / args.entries, 3),
        "wall_ms_per_row": round(1000 * wall / args.entries, 3),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "listing_parts": summary.listing.parts,
        "shards": summary.shards,
        "after_last_image_s": manifest["after_last_image_seconds"],
        "images_ok": summary.counts.images_ok,
        "images_error": summary.counts.images_error,
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
