"""Streaming COCO JSON from the label shards (bounded memory)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.labels import STATUS_OK
from labeler.io.shards import iter_shard_tables


@dataclass
class LabelCounts:
    """What the shards hold."""

    images_ok: int = 0
    images_error: int = 0
    detections: int = 0
    proposals: int = 0
    transfer_bytes_ok: int = 0  # summed over ok images

    @property
    def transfer_bytes_per_image(self) -> float:
        """Mean bytes an ok image carried from the SAM2 stage to the DINOv2 stage."""
        return self.transfer_bytes_ok / self.images_ok if self.images_ok else 0.0


def _image_entries(out: str, counts: LabelCounts) -> Iterator[str]:
    columns = ["image_id", "uri", "width", "height", "status", "proposals", "transfer_bytes"]
    for _, table in iter_shard_tables(out, columns):
        for row in table.to_pylist():
            if row["status"] != STATUS_OK:
                counts.images_error += 1
                continue
            counts.images_ok += 1
            counts.proposals += row["proposals"]
            counts.transfer_bytes_ok += row["transfer_bytes"]
            yield json.dumps({"id": row["image_id"], "file_name": row["uri"], "width": row["width"],
                              "height": row["height"]})


def _annotation_entries(out: str, counts: LabelCounts, min_score: float,
                        with_scores: bool) -> Iterator[str]:
    annotation_id = 0
    for _, table in iter_shard_tables(out, ["image_id", "height", "width", "status", "detections"]):
        for batch in table.to_batches(max_chunksize=256):
            for row in batch.to_pylist():
                for detection in row["detections"]:
                    if detection["score"] < min_score:
                        continue
                    annotation_id += 1
                    counts.detections += 1
                    entry = {
                        "id": annotation_id,
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


def _write_array(handle, entries: Iterator[str]) -> None:
    handle.write("[")
    for position, entry in enumerate(entries):
        handle.write(",\n" if position else "\n")
        handle.write(entry)
    handle.write("\n]")


def write_coco(
    out: str,
    categories: list[Category],
    *,
    target: str | None = None,
    min_score: float = 0.0,
    with_scores: bool = True,
    out_id: str | None = None,
) -> LabelCounts:
    """Write a COCO file (``OUT/coco.json`` by default) from the shards, one
    shard in memory at a time.

    Images with status ``ok`` are listed (``file_name`` is the image URI);
    error images are only in the Parquet shards and ``run.json`` counts.
    Detections scoring below ``min_score`` are left out; ``with_scores=False``
    writes a training set rather than results. ``out_id`` marks the file as the
    run folder's own (labeler may replace it). The file is streamed and
    published atomically (:func:`storage.open_atomic`).
    """
    counts = LabelCounts()
    info = {"description": "labeler predictions" if with_scores else f"labeler labels, score >= {min_score}"}
    if out_id:
        info["labeler_out"] = out_id
    with storage.open_atomic(target or out.rstrip("/") + "/coco.json") as binary:
        handle = io.TextIOWrapper(binary, encoding="utf-8")
        handle.write(json.dumps(info).join(['{"info": ', ',\n"categories": ']))
        handle.write(json.dumps([{"id": c.id, "name": c.name} for c in categories], ensure_ascii=False))
        handle.write(',\n"images": ')
        _write_array(handle, _image_entries(out, counts))
        handle.write(',\n"annotations": ')
        _write_array(handle, _annotation_entries(out, counts, min_score, with_scores))
        handle.write("}\n")
        handle.detach()  # flushes; the atomic writer closes the file
    return counts
