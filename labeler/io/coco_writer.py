"""COCO JSON documents from label tables, streamed: one table's (a COCO shard),
or many tables' in one file (:mod:`labeler.io.coco_merge`). Annotation ids
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
from labeler.io.labels import STATUS_OK

#: The label columns a COCO document is made of.
COCO_COLUMNS = ["image_id", "uri", "width", "height", "status", "detections"]


@dataclass
class CocoCounts:
    """What a COCO file holds."""

    images: int = 0
    annotations: int = 0


def _image_entries(table: pa.Table, counts: CocoCounts) -> Iterator[str]:
    columns = table.select(["image_id", "uri", "width", "height", "status"]).to_pydict()
    for image_id, uri, width, height, status in zip(*columns.values()):
        if status == STATUS_OK:
            counts.images += 1
            yield json.dumps({"id": image_id, "file_name": uri, "width": width, "height": height})


def _annotation_entries(table: pa.Table, counts: CocoCounts, min_score: float, with_scores: bool) -> Iterator[str]:
    for batch in table.select(["image_id", "height", "width", "detections"]).to_batches(max_chunksize=256):
        for row in batch.to_pylist():
            for detection in row["detections"]:
                if detection["score"] < min_score:
                    continue
                counts.annotations += 1
                entry = {
                    "id": counts.annotations,
                    "image_id": row["image_id"],
                    "category_id": detection["category_id"],
                    "bbox": [round(v, 2) for v in detection["bbox"]],
                    "area": detection["area"],
                    "segmentation": {"size": [row["height"], row["width"]], "counts": detection["rle"]},
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


def write_document(handle: TextIO, tables: Callable[[], Iterable[pa.Table]], categories: list[Category], info: dict[str, Any],
                    min_score: float, with_scores: bool) -> CocoCounts:
    """Write a COCO document from the label tables ``tables()`` yields (called twice:
    images, then annotations). Images with status ``ok`` are listed, with their URI
    as ``file_name``; detections scoring below ``min_score`` are left out;
    ``with_scores=False`` writes a training set rather than results."""
    counts = CocoCounts()
    handle.write(json.dumps(info).join(['{"info": ', ',\n"categories": ']))
    handle.write(json.dumps([{"id": c.id, "name": c.name} for c in categories], ensure_ascii=False))
    handle.write(',\n"images": ')
    _write_array(handle, (entry for table in tables() for entry in _image_entries(table, counts)))
    handle.write(',\n"annotations": ')
    _write_array(handle, (entry for table in tables()
                          for entry in _annotation_entries(table, counts, min_score, with_scores)))
    handle.write("}\n")
    return counts


def coco_shard_bytes(table: pa.Table, categories: list[Category], info: dict[str, Any]) -> bytes:
    """The COCO predictions document (with scores) of one label table."""
    handle = io.StringIO()
    write_document(handle, lambda: [table], categories, info, 0.0, True)
    return handle.getvalue().encode("utf-8")

