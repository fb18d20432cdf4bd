"""Label shards under ``OUT/labels``: atomic writes, listing, and exactly-once checks.

A shard is published whole (written to a temporary name and renamed, or
uploaded as one object), so a shard that is listed is complete data, and an
image is finished exactly when it is in a listed shard. That is what makes a
rerun resume: it skips the image ids of the listed shards. A shard that
cannot be read anyway (a file truncated by something other than labeler) is
moved aside under a name that is not a shard's, so its images are labelled
again instead of every rerun failing on it.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.io import out_folder, storage
from labeler.io.labels import LABELS_SCHEMA

log = logging.getLogger(__name__)

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
UNREADABLE_SUFFIX = ".unreadable"
#: Rows of images that left the source: kept out of the labels, but not thrown away.
REMOVED_DIR = f"{out_folder.STATE_DIR}/removed"


def labels_dir(out: str) -> str:
    return out_folder.join(out, out_folder.LABELS_DIR)


def new_shard_name() -> str:
    return f"{SHARD_PREFIX}{uuid.uuid4().hex}{SHARD_SUFFIX}"


def write_shard(out: str, table: pa.Table, folder: str | None = None) -> str:
    """Write one shard atomically under ``labels/`` (or ``folder``); returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(table.cast(LABELS_SCHEMA), buffer, compression="zstd")
    uri = f"{folder or labels_dir(out)}/{new_shard_name()}"
    storage.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def list_shards(out: str, folder: str | None = None) -> list[str]:
    """URIs of the published shards under ``labels/`` (or ``folder``), sorted;
    temporaries and other files are not shards."""
    folder = folder or labels_dir(out)
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return []
    names = sorted(name for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
                   if out_folder.is_shard_name(name))
    return [f"{folder}/{name}" for name in names]


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def iter_shard_tables(out: str, columns: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """Each published shard and its table (one shard in memory at a time)."""
    for uri in list_shards(out):
        yield uri, read_shard(uri, columns)


def set_aside_unreadable(out: str) -> list[str]:
    """Move shards that are not readable Parquet label tables aside; returns their new URIs."""
    moved = []
    for uri in list_shards(out):
        try:
            read_shard(uri, ["image_id"])
        except (pa.ArrowInvalid, KeyError) as error:
            fs, path = storage.filesystem(uri)
            fs.mv(path, path + UNREADABLE_SUFFIX)
            log.warning("%s: not a readable label shard (%s); moved aside to %s%s, its images are labelled again",
                        uri, error, uri, UNREADABLE_SUFFIX)
            moved.append(uri + UNREADABLE_SUFFIX)
    return moved


def finished_ids(out: str) -> np.ndarray:
    """Sorted unique image ids present in published shards."""
    ids = [table.column("image_id").to_numpy() for _, table in iter_shard_tables(out, ["image_id"])]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Reconciled:
    """Rows the final pass took out of the labels."""

    duplicates: int  # a second copy of an image (a retried write task)
    not_listed: int  # images the source no longer lists (moved to ``_state/removed/``)


def reconcile(out: str, listed_ids: np.ndarray) -> Reconciled:
    """Leave each listed image in exactly one shard, and no other image.

    Repeats after the first copy (shards in name order, then rows) are
    dropped; rows of images the source no longer lists (removed or renamed
    since they were labelled) are moved to ``_state/removed/``. A shard that
    changes is written anew before the old one is deleted, so a kill at any
    moment leaves every image at least once, and the next pass finishes.
    """
    shards = list_shards(out)
    per_shard = [read_shard(uri, ["image_id"]).column("image_id").to_numpy() for uri in shards]
    if not per_shard:
        return Reconciled(0, 0)
    ids = np.concatenate(per_shard)
    order = np.argsort(ids, kind="stable")
    first = np.ones(ids.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    keep = np.zeros(ids.size, dtype=bool)
    keep[order[first]] = True
    listed = np.isin(ids, listed_ids)
    duplicates = int((~keep & listed).sum())
    keep &= listed
    bounds = np.cumsum([0] + [len(values) for values in per_shard])
    for uri, start, end in zip(shards, bounds[:-1], bounds[1:]):
        if keep[start:end].all():
            continue
        table = read_shard(uri)
        if not listed[start:end].all():
            write_shard(out, table.filter(pa.array(~listed[start:end])), folder=out_folder.join(out, REMOVED_DIR))
        kept = table.filter(pa.array(keep[start:end]))
        if kept.num_rows:
            write_shard(out, kept)
        fs, path = storage.filesystem(uri)
        fs.rm(path)
    not_listed = int((~listed).sum())
    if not_listed:
        log.warning("%s: %d labelled images are no longer in the source; their rows moved to %s/",
                    out, not_listed, out_folder.join(out, REMOVED_DIR))
    return Reconciled(duplicates, not_listed)
