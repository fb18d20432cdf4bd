"""COCO JSON documents from label tables, streamed: one table's (a COCO shard),
or many tables' in one file (:mod:`labeler.outdir.merged_coco`). Annotation ids
run from 1 within each document.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import pyarrow as pa

from labeler.io.coco import Category
from labeler.io.labels import STATUS_OK, detection_rle
from labeler.label_filter import LabelFilter

#: The label columns a COCO document is made of.
COCO_COLUMNS = ["image_id", "uri", "file_name", "width", "height", "status", "detections"]


@dataclass
class CocoCounts:
    """What a COCO file holds."""

    images: int = 0
    annotations: int = 0
    images_left_out: int = 0  # ok images without a kept detection, when those are left out


def _rows(table: pa.Table, columns: list[str]) -> Iterator[dict]:
    for batch in table.select(columns).to_batches(max_chunksize=256):
        yield from batch.to_pylist()


def _image_entries(table: pa.Table, counts: CocoCounts, label_filter: LabelFilter | None,
                   drop_empty: bool, keep_ids: frozenset[int]) -> Iterator[str]:
    columns = ["image_id", "uri", "file_name", "width", "height", "status"] + (["detections"] if drop_empty else [])
    for row in _rows(table, columns):
        if row["status"] != STATUS_OK:
            continue
        if drop_empty and row["image_id"] not in keep_ids and not (
                label_filter.kept(row["detections"]) if label_filter else row["detections"]):
            counts.images_left_out += 1
            continue
        counts.images += 1
        yield json.dumps({"id": row["image_id"], "file_name": row["file_name"], "width": row["width"],
                          "height": row["height"], "uri": row["uri"]}, ensure_ascii=False)


def _annotation_entries(table: pa.Table, counts: CocoCounts, label_filter: LabelFilter | None,
                        with_scores: bool) -> Iterator[str]:
    for row in _rows(table, ["image_id", "height", "width", "detections"]):
        for detection in row["detections"]:
            if label_filter is not None and not label_filter.keeps(detection["category_id"], detection["score"]):
                continue
            counts.annotations += 1
            entry = {
                "id": counts.annotations,
                "image_id": row["image_id"],
                "category_id": detection["category_id"],
                "bbox": [round(v, 2) for v in detection["bbox"]],
                "area": detection["area"],
                "segmentation": detection_rle(row, detection),
                "iscrowd": 0,
            }
            if with_scores:
                entry["score"] = round(detection["score"], 6)
            yield json.dumps(entry)


def _write_array(handle: TextIO, entries: Iterator[str]) -> None:
    handle.write("[")
    for position, entry in enumerate(entries):
        handle.write(",\n" if position else "\n")
        handle.write(entry)
    handle.write("\n]")


def write_document(handle: TextIO, tables: Callable[[], Iterable[pa.Table]], categories: list[Category],
                   info: dict[str, Any], label_filter: LabelFilter | None = None, with_scores: bool = True,
                   drop_empty: bool = False, keep_ids: frozenset[int] = frozenset()) -> CocoCounts:
    """Write a COCO document from the label tables ``tables()`` yields (called twice:
    images, then annotations).

    Images with status ``ok`` are listed with their ``file_name`` (relative to
    the source root) and, as an extra key, their ``uri``; detections the
    ``label_filter`` drops are left out, and with ``drop_empty`` so are the
    images left without any, except those in ``keep_ids``; ``with_scores=False`` writes a training set
    rather than results.
    """
    counts = CocoCounts()
    handle.write(json.dumps(info).join(['{"info": ', ',\n"categories": ']))
    handle.write(json.dumps([{"id": c.id, "name": c.name} for c in categories], ensure_ascii=False))
    handle.write(',\n"images": ')
    _write_array(handle, (entry for table in tables()
                          for entry in _image_entries(table, counts, label_filter, drop_empty, keep_ids)))
    handle.write(',\n"annotations": ')
    _write_array(handle, (entry for table in tables()
                          for entry in _annotation_entries(table, counts, label_filter, with_scores)))
    handle.write("}\n")
    return counts


def coco_shard_bytes(table: pa.Table, categories: list[Category], info: dict[str, Any]) -> bytes:
    """The COCO predictions document (with scores) of one label table."""
    handle = io.StringIO()
    write_document(handle, lambda: [table], categories, info)
    return handle.getvalue().encode("utf-8")

