"""Label Studio's formats: its brush RLE, the labelling config, tasks with predictions,
and the regions of its JSON export.

Brush RLE. Label Studio stores a brush mask as the RGBA picture of the mask
(``H x W x 4`` bytes, row-major, each byte 255 inside and 0 outside), packed
by thi.ng's ``rle-pack``: a 32-bit value count, the word size minus one (5
bits), four run-length field widths minus one (4 bits each), then chunks of
``repeat bit, 2-bit width index, run length - 1, value(s)``. The encoder here
writes only repeat chunks (a mask's bytes come in runs of at least 4) with
the widths 3, 4, 8 and 16 bits, as Label Studio's own converter does;
the decoder reads any chunk.

Regions. A task's predictions carry, per detection, a ``brushlabels`` region
(the mask) and a ``rectanglelabels`` region (its box), both with the class
and the score; rectangles and polygons are in percent of the image.
"""

from __future__ import annotations

import html
import json
import math
import uuid
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError

MASK_TOOL = "mask"
BOX_TOOL = "box"
POLYGON_TOOL = "polygon"
IMAGE_FIELD = "image"
#: Bits of a run length for each width index, as Label Studio's converter writes them.
RUN_WIDTHS = (3, 4, 8, 16)
MAX_RUN = 1 << RUN_WIDTHS[-1]


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (the module doc) of an ``[H, W]`` mask, as a list of bytes."""
    pixels = np.asarray(mask).astype(bool).ravel()
    if pixels.size == 0:
        raise ValueError("an empty picture has no brush RLE")
    starts = np.concatenate(([0], np.flatnonzero(pixels[1:] != pixels[:-1]) + 1))
    lengths = np.diff(np.append(starts, pixels.size)) * 4  # 4 bytes (RGBA) per pixel
    values = np.where(pixels[starts], 255, 0)
    header = f"{pixels.size * 4:032b}{7:05b}" + "".join(f"{width - 1:04b}" for width in RUN_WIDTHS)
    chunks = [header]
    for length, value in zip(lengths.tolist(), values.tolist()):
        while length > 0:
            run = min(length, MAX_RUN)
            index = next(k for k, width in enumerate(RUN_WIDTHS) if run <= 1 << width)
            chunks.append(f"1{index:02b}{run - 1:0{RUN_WIDTHS[index]}b}{value:08b}")
            length -= run
    bits = "".join(chunks)
    bits += "0" * (-len(bits) % 8)
    return np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")).tolist()


class _Bits:
    """A bit stream read MSB first; fields are parsed by ``int(text, 2)`` on a string of 0s and 1s."""

    def __init__(self, data: list[int]):
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8)).tobytes().translate(_BIT_CHARACTERS).decode()
        self.position = 0

    def read(self, count: int) -> int:
        if self.position + count > len(self.bits):
            raise LabelerError("the brush RLE ends early")
        value = int(self.bits[self.position:self.position + count], 2)
        self.position += count
        return value


_BIT_CHARACTERS = bytes.maketrans(b"\x00\x01", b"01")


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """The ``[H, W]`` bool mask of a Label Studio brush RLE (its alpha channel)."""
    stream = _Bits(rle)
    count = stream.read(32)
    if count != height * width * 4:
        raise LabelerError(f"a brush RLE of {count} values does not fit a {width}x{height} image")
    word = stream.read(5) + 1
    if word > 8:
        raise LabelerError(f"a brush RLE of {word}-bit values; Label Studio's are bytes")
    widths = [stream.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeat = stream.read(1)
        j = min(count, i + 1 + stream.read(widths[stream.read(2)]))
        if repeat:
            out[i:j] = stream.read(word)
        else:
            for k in range(i, j):
                out[k] = stream.read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0


def labelling_config(class_names: list[str], colours: list[tuple[int, int, int]]) -> str:
    """The labelling interface the tasks' predictions are for: brush masks, boxes and polygons of the classes."""
    def labels(tag: str, name: str, extra: str = "") -> str:
        entries = "\n".join(
            f'    <Label value="{html.escape(n, quote=True)}" background="#{r:02x}{g:02x}{b:02x}"/>'
            for n, (r, g, b) in zip(class_names, colours))
        return f'  <{tag} name="{name}" toName="{IMAGE_FIELD}"{extra}>\n{entries}\n  </{tag}>'

    return "\n".join([
        "<View>",
        f'  <Image name="{IMAGE_FIELD}" value="${IMAGE_FIELD}" zoom="true" zoomControl="true"/>',
        labels("BrushLabels", MASK_TOOL),
        labels("RectangleLabels", BOX_TOOL),
        labels("PolygonLabels", POLYGON_TOOL),
        "</View>",
    ]) + "\n"


def prediction_regions(name: str, score: float, mask: np.ndarray, bbox: list[float]) -> list[dict]:
    """A detection as Label Studio regions: its brush mask and its box (percent of the image)."""
    height, width = mask.shape
    region = uuid.uuid4().hex[:10]
    common = {"to_name": IMAGE_FIELD, "original_width": width, "original_height": height, "image_rotation": 0,
              "score": round(float(score), 6)}
    x, y, w, h = bbox
    return [
        {"id": region, "from_name": MASK_TOOL, "type": "brushlabels", **common,
         "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [name]}},
        {"id": f"{region}b", "from_name": BOX_TOOL, "type": "rectanglelabels", **common,
         "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width, "height": 100 * h / height,
                   "rotation": 0, "rectanglelabels": [name]}},
    ]


@dataclass(frozen=True)
class ReviewedInstance:
    """One instance a reviewer left in an image: its class name and its mask as a pycocotools RLE."""

    name: str
    rle: dict


def encode_mask(mask: np.ndarray) -> dict:
    """A pycocotools RLE of an ``[H, W]`` mask."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelerError(f"{what} must be a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def _label(value: dict, key: str) -> str:
    labels = value.get(key)
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise LabelerError(f"'{key}' must name one class, as [\"name\"], got {json.dumps(labels)[:60]}")
    return labels[0]


def _brush(value: dict, height: int, width: int) -> dict:
    rle = value.get("rle")
    if not isinstance(rle, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                            for v in rle):
        raise LabelerError("'rle' must be a list of bytes (integers 0 to 255)")
    return encode_mask(rle_to_mask(rle, height, width))


def _percent_points(points: object, height: int, width: int) -> list[float]:
    if not isinstance(points, list) or len(points) < 3 or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise LabelerError("'points' must be a list of at least 3 [x, y] pairs")
    flat = []
    for x, y in points:
        flat += [_number(x, "a point's x") * width / 100, _number(y, "a point's y") * height / 100]
    return flat


def _polygon_rle(flat: list[float], height: int, width: int) -> dict:
    """A polygon in pixels, clipped to the image, rasterised as pycocotools rasterises COCO polygons."""
    points = np.asarray(flat, dtype=np.float64).reshape(-1, 2).clip(0, [width, height])
    return mask_utils.frPyObjects([points.ravel().tolist()], height, width)[0]


def _box_polygon(value: dict, height: int, width: int) -> list[float]:
    """A rectangle region's corners in pixels; Label Studio rotates it about its top-left corner."""
    x, y, w, h = (_number(value.get(key), f"'{key}'") for key in ("x", "y", "width", "height"))
    if w <= 0 or h <= 0:
        raise LabelerError(f"box of width {w:g}% and height {h:g}% is empty")
    angle = math.radians(_number(value.get("rotation", 0), "'rotation'"))
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pixels = (corners @ turn.T + [x, y]) * [width / 100, height / 100]
    return pixels.ravel().tolist()


def _inside(flat: list[float], height: int, width: int) -> bool:
    points = np.asarray(flat).reshape(-1, 2)
    low, high = points.min(axis=0), points.max(axis=0)
    return bool(high[0] > 0 and high[1] > 0 and low[0] < width and low[1] < height)


def _region(region: object, height: int, width: int) -> tuple[str, ReviewedInstance] | None:
    """``("mask" | "box", instance)`` of one region of a ``result``; None for other kinds (relations, text)."""
    if not isinstance(region, dict):
        raise LabelerError("not an object")
    kind, value = region.get("type"), region.get("value")
    if not isinstance(kind, str):
        raise LabelerError(f"'type' must be a string, got {json.dumps(kind)[:40]}")
    kind = kind.lower()
    if kind not in ("brushlabels", "polygonlabels", "rectanglelabels"):
        return None
    if not isinstance(value, dict):
        raise LabelerError("'value' must be an object")
    name = _label(value, kind)
    if kind == "brushlabels":
        return MASK_TOOL, ReviewedInstance(name, _brush(value, height, width))
    flat = _percent_points(value.get("points"), height, width) if kind == "polygonlabels" \
        else _box_polygon(value, height, width)
    if not _inside(flat, height, width):
        raise LabelerError(f"the {'polygon' if kind == 'polygonlabels' else 'box'} lies outside the image")
    shape = MASK_TOOL if kind == "polygonlabels" else BOX_TOOL
    return shape, ReviewedInstance(name, _polygon_rle(flat, height, width))


#: Share of a mask region that must lie inside a box of its class for the box to be that region's.
BOX_COVERS_MASK = 0.5


def _boxes_alone(masks: list[ReviewedInstance], boxes: list[ReviewedInstance]) -> list[ReviewedInstance]:
    """The boxes no mask region of their class lies in (at least half of it): boxes a reviewer drew alone.

    Boxes first: only pairs whose bounding boxes meet are compared pixel by pixel,
    so a task with thousands of regions costs about as many comparisons as regions.
    """
    if not masks or not boxes:
        return boxes
    mask_boxes = mask_utils.toBbox([m.rle for m in masks])  # x, y, w, h
    box_boxes = mask_utils.toBbox([b.rle for b in boxes])
    meet = ((box_boxes[:, None, 0] < mask_boxes[None, :, 0] + mask_boxes[None, :, 2])
            & (mask_boxes[None, :, 0] < box_boxes[:, None, 0] + box_boxes[:, None, 2])
            & (box_boxes[:, None, 1] < mask_boxes[None, :, 1] + mask_boxes[None, :, 3])
            & (mask_boxes[None, :, 1] < box_boxes[:, None, 1] + box_boxes[:, None, 3]))
    mask_areas = [int(mask_utils.area(m.rle)) for m in masks]  # area() of a list fails from 256 masks
    alone = []
    for i, box in enumerate(boxes):
        covered = False
        for j in np.flatnonzero(meet[i]):
            if masks[j].name != box.name:
                continue
            inside = mask_utils.area(mask_utils.merge([masks[j].rle, box.rle], intersect=True))
            if inside >= BOX_COVERS_MASK * max(int(mask_areas[j]), 1):
                covered = True
                break
        if not covered:
            alone.append(box)
    return alone


def reviewed_instances(result: object, height: int, width: int, where: str) -> list[ReviewedInstance]:
    """The instances of one Label Studio annotation's ``result``: brush and polygon regions as masks;
    a box only where no mask region of its class lies in it (a box a reviewer drew alone: its filled box).
    Every value is checked; a polygon or box is clipped to the image.

    Raises:
        LabelerError: a region that cannot be read, naming ``where`` and the region.
    """
    if not isinstance(result, list):
        raise LabelerError(f"{where}: 'result' must be a list of regions")
    masks, boxes = [], []
    for position, region in enumerate(result):
        label = region.get("id", position) if isinstance(region, dict) else position
        try:
            found = _region(region, height, width)
        except LabelerError as error:
            raise LabelerError(f"{where}: region {json.dumps(label)[:40]}: {error}") from None
        if found is not None:
            (masks if found[0] == MASK_TOOL else boxes).append(found[1])
    return masks + _boxes_alone(masks, boxes)
