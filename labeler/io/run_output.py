"""Reading a finished run's folder: its manifest, categories and label rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.shards import iter_shard_tables, list_shards


def read_manifest(out: str) -> dict[str, Any]:
    """``OUT/run.json``; a clear error when OUT is not a finished run."""
    uri = out.rstrip("/") + "/run.json"
    if not storage.exists(uri):
        raise LabelerError(f"{out}: no run.json; not the output folder of a finished `labeler run`")
    return json.loads(storage.read_bytes(uri))


def run_categories(out: str) -> list[Category]:
    """The categories of a run, in bank order."""
    return [Category(id=int(c["id"]), name=str(c["name"])) for c in read_manifest(out)["categories"]]


def iter_label_rows(out: str, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
    """Label rows of all shards, a few hundred in memory at a time."""
    if not list_shards(out):
        raise LabelerError(f"{out}: no label shards under labels/")
    for _, table in iter_shard_tables(out, columns):
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield from batch.to_pylist()
