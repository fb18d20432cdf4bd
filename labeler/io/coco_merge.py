"""One COCO file merged from a run's shards: ``OUT/coco.json`` for small runs and
``labeler export coco``, streamed one shard at a time; and a run's predictions
gathered from its COCO shards for evaluation."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_writer import COCO_COLUMNS, CocoCounts, write_document
from labeler.io.shards import iter_shard_tables, list_coco_shards


def write_coco(
    out: str,
    categories: list[Category],
    *,
    target: str | None = None,
    min_score: float = 0.0,
    with_scores: bool = True,
    out_id: str | None = None,
) -> CocoCounts:
    """Write one COCO file (``OUT/coco.json`` by default) merged from the Parquet
    shards, one shard in memory at a time; annotation ids are numbered across the file.

    Detections scoring below ``min_score`` are left out; ``with_scores=False``
    writes a training set rather than results. ``out_id`` marks the file as the
    run folder's own (labeler may replace it). The file is published
    atomically (:func:`storage.open_atomic`).
    """
    info = {"description": "labeler predictions" if with_scores else f"labeler labels, score >= {min_score}"}
    if out_id:
        info["labeler_out"] = out_id

    def tables() -> Iterator[pa.Table]:
        return (table for _, table in iter_shard_tables(out, COCO_COLUMNS))

    with storage.open_atomic(target or out.rstrip("/") + "/coco.json") as binary:
        handle = io.TextIOWrapper(binary, encoding="utf-8")
        counts = write_document(handle, tables, categories, info, min_score, with_scores)
        handle.detach()  # flushes; the atomic writer closes the file
    return counts


def read_coco_shards(out: str) -> dict[str, Any]:
    """The predictions of a run's COCO shards as one document (annotation ids renumbered)."""
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    for uri in list_coco_shards(out):
        document = json.loads(storage.read_bytes(uri))
        merged["categories"] = document["categories"]
        merged["images"] += document["images"]
        for annotation in document["annotations"]:
            annotation["id"] = len(merged["annotations"]) + 1
            merged["annotations"].append(annotation)
    return merged
