"""``labeler export``: training sets from a run's labels, streaming over its shards.

Formats:

* ``coco``: a COCO dataset of the detections scoring at least ``min_score``
  (RLE segmentations, no scores), written without holding it in memory.
* ``yolo``: Ultralytics' segmentation layout: ``images/`` (links to, or for
  remote sources copies of, the labelled images), ``labels/`` with one
  ``.txt`` per image (``class x1 y1 x2 y2 ...``, coordinates normalised to
  0..1) and ``data.yaml``. A mask's outer contours are traced with OpenCV;
  several parts are joined into one polygon by zero-width bridges (as
  Ultralytics does when it converts COCO masks), and holes are filled, since
  a YOLO polygon cannot carry them.
* ``semantic``: one PNG class-index map per image (0 = background, class
  ``k`` = the k-th category of the bank; a pixel claimed by several
  detections goes to the highest score), with ``legend.json`` and
  ``legend.png``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image, ImageDraw

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_merge import write_coco
from labeler.io.labels import STATUS_OK
from labeler.io.rle import decode_masks
from labeler.io.run_output import iter_label_rows, run_categories
from labeler.visualize import category_colours

FORMATS = ("coco", "yolo", "semantic")


@dataclass
class ExportResult:
    """What an export wrote."""

    folder: Path
    images: int
    instances: int


def _bridge(polygon: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Join ``part`` into ``polygon`` through their closest points, there and back."""
    distances = ((polygon[:, None, :] - part[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    rotated = np.roll(part, -j, axis=0)
    return np.concatenate([polygon[: i + 1], rotated, rotated[:1], polygon[i:]])


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon ``[N, 2]`` (x, y pixel coordinates) covering every part of a mask, holes filled."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c[:, 0, :].astype(np.float64) for c in contours if len(c) >= 1), key=len, reverse=True)
    if not parts:
        return np.zeros((0, 2))
    polygon = parts[0]
    for part in parts[1:]:
        polygon = _bridge(polygon, part)
    return polygon


def polygon_to_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon as Ultralytics does (``cv2.fillPoly``): ``[H, W]`` uint8."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(polygon):
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask


def _kept(row: dict, min_score: float) -> list[dict]:
    return [d for d in row["detections"] if d["score"] >= min_score]


def _export_name(row: dict) -> str:
    base = Path(row["uri"].split("?")[0]).name or "image"
    return f"{row['image_id']}_{base}"


def _place_image(uri: str, target: Path) -> None:
    if target.exists() or target.is_symlink():
        target.unlink()
    if storage.is_local(uri):
        os.symlink(os.path.abspath(uri.removeprefix("file://")), target)
    else:
        target.write_bytes(storage.read_bytes(uri))


def export_yolo(pred: str, folder: Path, categories: list[Category], min_score: float) -> ExportResult:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    index = {category.id: position for position, category in enumerate(categories)}
    images = instances = 0
    for row in iter_label_rows(pred):
        if row["status"] != STATUS_OK:
            continue
        kept = _kept(row, min_score)
        masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"])
        lines = []
        for detection, mask in zip(kept, masks):
            polygon = mask_to_polygon(mask)
            if len(polygon) < 3:
                continue
            normalised = polygon / np.array([row["width"], row["height"]], dtype=np.float64)
            coordinates = " ".join(f"{v:.6f}" for v in normalised.clip(0.0, 1.0).flatten())
            lines.append(f"{index[detection['category_id']]} {coordinates}")
        name = _export_name(row)
        _place_image(row["uri"], folder / "images" / name)
        (folder / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        images += 1
        instances += len(lines)
    data = {"path": str(folder.resolve()), "train": "images", "val": "images",
            "names": {position: c.name for position, c in enumerate(categories)}}
    (folder / "data.yaml").write_text(
        f"# labeler export (min score {min_score}); Ultralytics segmentation dataset\n"
        + yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return ExportResult(folder, images, instances)


def export_semantic(pred: str, folder: Path, categories: list[Category], min_score: float) -> ExportResult:
    folder.mkdir(parents=True, exist_ok=True)
    index = {category.id: position + 1 for position, category in enumerate(categories)}
    dtype = np.uint8 if len(categories) < 256 else np.uint16
    colours = category_colours(categories)
    palette = [0, 0, 0] + [v for c in categories for v in colours[c.id]]
    images = instances = 0
    for row in iter_label_rows(pred):
        if row["status"] != STATUS_OK:
            continue
        kept = sorted(_kept(row, min_score), key=lambda d: d["score"])  # highest score painted last
        masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"]).astype(bool)
        classes = np.zeros((row["height"], row["width"]), dtype=dtype)
        for detection, mask in zip(kept, masks):
            classes[mask] = index[detection["category_id"]]
        image = Image.fromarray(classes)
        if dtype == np.uint8:
            image = image.convert("P")
            image.putpalette(palette)
        image.save(folder / f"{row['image_id']}.png")
        images += 1
        instances += len(kept)
    legend = {"0": {"category_id": None, "name": "background", "colour": [0, 0, 0]}}
    legend.update({str(index[c.id]): {"category_id": c.id, "name": c.name, "colour": list(colours[c.id])}
                   for c in categories})
    (folder / "legend.json").write_text(json.dumps(legend, indent=2))
    _legend_picture(legend, folder / "legend.png")
    return ExportResult(folder, images, instances)


def _legend_picture(legend: dict, path: Path) -> None:
    picture = Image.new("RGB", (260, 22 * len(legend) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for row, (value, entry) in enumerate(legend.items()):
        top = 4 + 22 * row
        draw.rectangle([4, top, 22, top + 16], fill=tuple(entry["colour"]), outline=(0, 0, 0))
        draw.text((30, top + 3), f"{value}: {entry['name']}", fill=(0, 0, 0))
    picture.save(path)


def export(pred: str, fmt: str, out_dir: str, min_score: float = 0.0) -> ExportResult:
    """Export the labels of the run in ``pred`` as ``fmt`` into ``out_dir``."""
    if fmt not in FORMATS:
        raise LabelerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 0.0 <= min_score <= 1.0:
        raise LabelerError("--min-score must be in [0, 1]")
    categories = run_categories(pred)
    folder = Path(out_dir)
    if fmt == "yolo":
        return export_yolo(pred, folder, categories, min_score)
    if fmt == "semantic":
        return export_semantic(pred, folder, categories, min_score)
    folder.mkdir(parents=True, exist_ok=True)
    counts = write_coco(pred, categories, target=str(folder / "annotations.json"), min_score=min_score,
                        with_scores=False)
    return ExportResult(folder, counts.images, counts.annotations)
