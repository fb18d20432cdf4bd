"""Synthetic datasets with exact COCO ground truth, for the demo, tests and benchmarks.

Images hold a few instances of distinct shape classes (each with its own
colour and texture) on varied backgrounds; classes come in shuffled cycles,
so any four consecutive instances cover all four default classes. Category ids are deliberately not
contiguous. Segmentations can be written as polygons, compressed RLE,
uncompressed RLE, boxes only, or a mix of all four.

:func:`proposal_logits` makes low-res mask logits shaped like SAM2's
automatic proposals, for timing the stages after SAM2 when the SAM2
weights are random (see ``labeler bench``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from labeler.io.coco import coco_rle

SegmentationKind = Literal["polygon", "rle", "rle-uncompressed", "box", "mixed"]
SEGMENTATION_KINDS: tuple[str, ...] = ("polygon", "rle", "rle-uncompressed", "box")


@dataclass(frozen=True)
class ShapeClass:
    """A synthetic class: a shape, a base colour and a texture."""

    id: int
    name: str
    colour: tuple[int, int, int]
    texture: Literal["flat", "stripes", "dots", "checker"]


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass(1, "disc", (220, 60, 50), "flat"),
    ShapeClass(3, "square", (40, 120, 220), "stripes"),
    ShapeClass(7, "triangle", (240, 200, 40), "dots"),
    ShapeClass(12, "star", (60, 180, 90), "checker"),
)


def outline(name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """The polygon of a shape class ``name`` centred at ``(cx, cy)``, ``radius`` pixels out, turned by ``angle``."""
    if name == "disc":
        corners, radii = 48, [radius]
    elif name == "square":
        corners, radii = 4, [radius]
    elif name == "triangle":
        corners, radii = 3, [radius]
    else:
        corners, radii = 10, [radius, radius * 0.45]
    return [
        (cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / corners),
         cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def _texture(shape: ShapeClass, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.array(shape.colour, dtype=np.float32)
    if shape.texture == "stripes":
        pattern = ((xx + yy) // 6 % 2)[..., None] * 0.45 + 0.55
    elif shape.texture == "dots":
        pattern = (((xx % 8) - 4) ** 2 + ((yy % 8) - 4) ** 2 < 5)[..., None] * -0.5 + 1.0
    elif shape.texture == "checker":
        pattern = ((xx // 7 + yy // 7) % 2)[..., None] * 0.4 + 0.6
    else:
        pattern = np.ones((height, width, 1), dtype=np.float32)
    noise = rng.normal(0, 8, size=(height, width, 3))
    return np.clip(base * pattern + noise, 0, 255).astype(np.uint8)


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    start, end = rng.integers(30, 200, size=3), rng.integers(30, 200, size=3)
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    image = start * (1 - ramp) + end * ramp + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(np.broadcast_to(image, (height, width, 3)), 0, 255).astype(np.uint8)


def _segmentation(kind: str, polygon: list[float], mask: np.ndarray) -> list | dict | None:
    if kind == "polygon":
        return [polygon]
    if kind == "box":
        return None
    rle = mask_utils.encode(np.asfortranarray(mask))
    if kind == "rle":
        return coco_rle(rle["counts"].decode("ascii"), *rle["size"])
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return coco_rle(counts, *mask.shape)


def generate_dataset(
    out_dir: str | Path,
    num_images: int,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 256),
    objects_per_image: tuple[int, int] = (1, 3),
    segmentation: SegmentationKind = "polygon",
    subfolders: bool = True,
    classes: tuple[ShapeClass, ...] = SHAPE_CLASSES,
    annotation_file: str = "annotations.json",
    image_format: Literal["png", "jpg"] = "png",
    first_image_id: int = 1,
) -> Path:
    """Write ``num_images`` images under ``out_dir/images`` and their COCO file.

    Args:
        out_dir: destination folder.
        num_images: how many images.
        seed: everything is a function of the seed.
        image_size: ``(width, height)`` of each image.
        objects_per_image: inclusive range of instances per image.
        segmentation: how annotations store their masks; ``mixed`` cycles
            through polygon, compressed RLE, uncompressed RLE and box-only.
        subfolders: spread images over sub-folders (``file_name`` with ``/``).
        classes: the shape classes to draw.
        annotation_file: name of the COCO JSON written in ``out_dir``.
        image_format: ``png`` or ``jpg``.
        first_image_id: id of the first image (ids are consecutive).

    Returns:
        The path of the COCO JSON; ``file_name``s are relative to ``out_dir/images``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = image_size
    images, annotations = [], []
    annotation_id = 1
    class_cycle: list[int] = []
    for index in range(num_images):
        image_id = first_image_id + index
        canvas = _background((height, width), rng)
        count = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        columns = max(1, count)
        cell = width / columns
        for slot in range(count):
            if not class_cycle:  # every class once per cycle, in a fresh random order
                class_cycle = rng.permutation(len(classes)).tolist()
            shape = classes[class_cycle.pop()]
            radius = float(rng.uniform(0.28, 0.4) * min(cell, height))
            cx = cell * (slot + 0.5) + float(rng.uniform(-0.05, 0.05) * cell)
            cy = float(rng.uniform(radius + 12, height - radius - 12))
            corners = outline(shape.name, cx, cy, radius, float(rng.uniform(0, 2 * math.pi)))
            stencil = Image.new("L", (width, height), 0)
            ImageDraw.Draw(stencil).polygon(corners, fill=1)
            mask = np.asarray(stencil, dtype=np.uint8)
            if not mask.any():
                continue
            canvas = np.where(mask[..., None] == 1, _texture(shape, (height, width), rng), canvas)
            kind = SEGMENTATION_KINDS[annotation_id % 4] if segmentation == "mixed" else segmentation
            polygon = [round(v, 2) for point in corners for v in point]
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({
                "id": annotation_id, "image_id": image_id, "category_id": shape.id, "bbox": bbox,
                "area": float(mask.sum()), "iscrowd": 0, "segmentation": _segmentation(kind, polygon, mask),
            })
            annotation_id += 1
        folder = f"part{index % 3}/" if subfolders else ""
        file_name = f"{folder}img_{image_id:05d}.{image_format}"
        (out / "images" / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).save(out / "images" / file_name, quality=92) if image_format == "jpg" else \
            Image.fromarray(canvas).save(out / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    document = {
        "info": {"description": f"labeler synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "supercategory": "shape"} for c in classes],
    }
    path = out / annotation_file
    path.write_text(json.dumps(document))
    return path


def proposal_logits(
    count: int, size: tuple[int, int], seed: int, *, regions: int = 48, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[count, h, w]`` low-res mask logits shaped like SAM2's grid proposals.

    SAM2 prompted at a grid of points returns smooth, mostly convex masks of
    objects, parts and background regions, with many near-duplicates (several
    points fall on each object). So: ``regions`` wobbly ellipses with sizes
    log-uniform from 2 % to 35 % of the grid side, as logits equal to twice
    the signed distance to the outline in low-res pixels, clamped to SAM2's
    +/-32 (the sign changes over about one pixel, as with SAM2); each
    proposal is one region shifted by a few pixels and scaled by about 10 %
    (nearest-neighbour resampling, edges replicated). None is empty.
    Deterministic in ``seed``.
    """
    height, width = size
    side = float(min(height, width))
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    centre = torch.stack([uniform((regions,), 0, width), uniform((regions,), 0, height)], dim=1)
    radius = torch.exp(uniform((regions,), math.log(max(0.02 * side, 2.0)), math.log(0.35 * side)))
    aspect, angle, phase = uniform((regions,), 0.5, 2.0), uniform((regions,), 0, math.pi), uniform((regions, 2), 0, 2 * math.pi)
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    dx, dy = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u = (dx * cos + dy * sin) / aspect.sqrt()[:, None, None]
    v = (-dx * sin + dy * cos) * aspect.sqrt()[:, None, None]
    theta = torch.atan2(v, u)
    wobble = 1.0 + 0.12 * torch.sin(3 * theta + phase[:, 0, None, None]) + 0.06 * torch.sin(5 * theta + phase[:, 1, None, None])
    base = ((radius[:, None, None] * wobble - torch.sqrt(u * u + v * v)) * 2.0).clamp(-32.0, 32.0).to(device)

    drawn = count + count // 4 + 8  # more than asked: dropping empty ones still leaves `count`, or cycles
    pick = torch.randint(regions, (drawn,), generator=generator)
    shift = torch.randn(drawn, 2, generator=generator) * 0.02 * side
    scale = (1.0 + 0.1 * torch.randn(drawn, generator=generator)).clamp(0.7, 1.3)
    source_x = centre[pick, 0, None] + (xs[0] - centre[pick, 0, None] - shift[:, 0, None]) / scale[:, None]
    source_y = centre[pick, 1, None] + (ys[:, 0] - centre[pick, 1, None] - shift[:, 1, None]) / scale[:, None]
    column = source_x.floor().long().clamp(0, width - 1).to(device)
    row = source_y.floor().long().clamp(0, height - 1).to(device)
    logits = base[pick.to(device)[:, None, None], row[:, :, None], column[:, None, :]]
    non_empty = logits[(logits > 0).flatten(1).any(dim=1)]
    return non_empty[torch.arange(count, device=non_empty.device) % max(non_empty.shape[0], 1)]
