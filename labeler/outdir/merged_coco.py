"""One COCO file merged from a run's shards: ``OUT/coco.json`` for small runs and
``labeler export coco``, streamed one shard at a time; and a run's predictions
gathered from its COCO shards for evaluation."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_writer import COCO_COLUMNS, CocoCounts, write_document
from labeler.label_filter import LabelFilter
from labeler.outdir import layout as out_folder
from labeler.outdir.shards import iter_shard_tables, list_coco_shards


def write_coco(
    out: str,
    categories: list[Category],
    *,
    target: str | None = None,
    label_filter: LabelFilter | None = None,
    with_scores: bool = True,
    drop_empty: bool = False,
    image_root: str | None = None,
    out_id: str | None = None,
    transform: Callable[[pa.Table], pa.Table] | None = None,
    keep_ids: frozenset[int] = frozenset(),
) -> CocoCounts:
    """Write one COCO file (``OUT/coco.json`` by default) merged from the Parquet
    shards, one shard in memory at a time; annotation ids are numbered across the file.

    Detections ``label_filter`` drops are left out, and with ``drop_empty`` the
    images left without any but those in ``keep_ids``; ``with_scores=False`` writes a training set
    rather than results. ``image_root`` (the root the ``file_name`` entries
    are relative to) is recorded in ``info``. ``transform`` is applied to each
    shard's table first (an export picks its split and names there). ``out_id`` marks the file as the
    run folder's own (labeler may replace it). The file is published
    atomically (:func:`storage.open_atomic`).
    """
    info: dict[str, Any] = {"description": "labeler predictions" if with_scores else (
        "labeler labels, " + (label_filter.describe(categories) if label_filter else "every detection"))}
    if image_root:
        info["image_root"] = image_root
    if out_id:
        info["labeler_out"] = out_id

    def tables() -> Iterator[pa.Table]:
        return (transform(table) if transform else table for _, table in iter_shard_tables(out, COCO_COLUMNS))

    with storage.open_atomic(target or out_folder.join(out, out_folder.COCO_NAME)) as binary:
        handle = io.TextIOWrapper(binary, encoding="utf-8")
        counts = write_document(handle, tables, categories, info, label_filter, with_scores, drop_empty, keep_ids)
        handle.detach()  # flushes; the atomic writer closes the file
    return counts


def read_coco_shards(out: str) -> dict[str, Any]:
    """The predictions of a run's COCO shards as one document (annotation ids renumbered)."""
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    for uri in list_coco_shards(out):
        try:
            document = json.loads(storage.read_bytes(uri))
            categories, images, annotations = document["categories"], document["images"], document["annotations"]
        except (ValueError, TypeError, KeyError):
            raise LabelerError(f"{uri}: a damaged COCO shard; rerun the same `labeler run` command on {out} to "
                               "write it anew from its Parquet shard") from None
        merged["categories"] = categories
        merged["images"] += images
        for annotation in annotations:
            annotation["id"] = len(merged["annotations"]) + 1
            merged["annotations"].append(annotation)
    return merged
