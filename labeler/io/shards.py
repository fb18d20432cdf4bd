"""Label shards under ``OUT/labels``: atomic writes, listing, and exactly-once checks.

A shard is published whole (written to a temporary name and renamed, or
uploaded as one object), so a shard that is listed is complete data, and an
image is finished exactly when it is in a listed shard. That is what makes a
rerun resume: it skips the image ids of the listed shards.
"""

from __future__ import annotations

import io
import posixpath
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io import storage
from labeler.io.labels import LABELS_SCHEMA

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"


def labels_dir(out: str) -> str:
    return out.rstrip("/") + "/labels"


def new_shard_name() -> str:
    return f"{SHARD_PREFIX}{uuid.uuid4().hex}{SHARD_SUFFIX}"


def write_shard(out: str, table: pa.Table) -> str:
    """Write one shard atomically; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(table.cast(LABELS_SCHEMA), buffer, compression="zstd")
    uri = f"{labels_dir(out)}/{new_shard_name()}"
    storage.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def list_shards(out: str) -> list[str]:
    """URIs of the published shards, sorted (temporary files are not shards)."""
    folder = labels_dir(out)
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return []
    names = sorted(
        posixpath.basename(p) for p in fs.ls(path, detail=False)
        if posixpath.basename(p).startswith(SHARD_PREFIX) and p.endswith(SHARD_SUFFIX)
    )
    return [f"{folder}/{name}" for name in names]


def remove_temporaries(out: str) -> int:
    """Delete leftovers of interrupted local writes; returns how many."""
    folder = labels_dir(out)
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.ls(path, detail=False) if ".tmp-" in posixpath.basename(p)]
    for leftover in stale:
        fs.rm(leftover)
    return len(stale)


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def iter_shard_tables(out: str, columns: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """Each published shard and its table (one shard in memory at a time)."""
    for uri in list_shards(out):
        yield uri, read_shard(uri, columns)


def finished_ids(out: str) -> np.ndarray:
    """Sorted unique image ids present in published shards."""
    ids = [table.column("image_id").to_numpy() for _, table in iter_shard_tables(out, ["image_id"])]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


def remove_duplicates(out: str) -> int:
    """Keep each image id in one shard only (the first in name order).

    A retried write task can publish an image twice; this rewrites the later
    shards without the repeats. Returns the number of rows removed.
    """
    seen: set[int] = set()
    removed = 0
    for uri, ids in iter_shard_tables(out, ["image_id"]):
        values = ids.column("image_id").to_numpy()
        _, first = np.unique(values, return_index=True)
        keep = np.zeros(len(values), dtype=bool)
        keep[first] = True
        keep &= ~np.isin(values, np.fromiter(seen, dtype=np.int64, count=len(seen)))
        seen.update(values.tolist())
        if keep.all():
            continue
        removed += int((~keep).sum())
        table = read_shard(uri).filter(pa.array(keep))
        fs, path = storage.filesystem(uri)
        if table.num_rows:
            write_shard(out, table)
        fs.rm(path)
    return removed
