"""Reading a finished run's folder: its manifest, categories and label rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.outdir.shards import iter_shard_tables, list_shards


def _damaged(uri: str, what: str) -> LabelerError:
    return LabelerError(f"{uri}: {what}; rerun the same `labeler run` command on this folder to write it anew "
                        "(its labels are kept)")


def read_manifest(out: str) -> dict[str, Any]:
    """``OUT/run.json``, checked; a clear error when OUT is not a finished run or its manifest is damaged."""
    uri = out.rstrip("/") + "/run.json"
    if not storage.exists(uri):
        raise LabelerError(f"{out}: no run.json; not the output folder of a finished `labeler run`")
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(uri, "not JSON") from None
    if not isinstance(manifest, dict):
        raise _damaged(uri, "not a JSON object")
    categories = manifest.get("categories")
    if not isinstance(categories, list) or not categories or not all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and not isinstance(c.get("id"), bool)
            and isinstance(c.get("name"), str) for c in categories):
        raise _damaged(uri, "no 'categories' list of {id, name}")
    if len({c["id"] for c in categories}) != len(categories):
        raise _damaged(uri, "duplicate category ids")
    root = manifest.get("source_root")
    if root is not None and not isinstance(root, str):
        raise _damaged(uri, "'source_root' is not a string")
    return manifest


def run_categories(out: str) -> list[Category]:
    """The categories of a run, in bank order."""
    return [Category(id=c["id"], name=c["name"]) for c in read_manifest(out)["categories"]]


def iter_label_rows(out: str, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
    """Label rows of all shards, a few hundred in memory at a time."""
    if not list_shards(out):
        raise LabelerError(f"{out}: no label shards under labels/")
    for _, table in iter_shard_tables(out, columns):
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield from batch.to_pylist()
