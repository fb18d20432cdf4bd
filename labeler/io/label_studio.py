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
import uuid
from dataclasses import dataclass

import numpy as np

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
    def __init__(self, data: list[int]):
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.position = 0

    def read(self, count: int) -> int:
        if self.position + count > self.bits.size:
            raise LabelerError("a Label Studio brush RLE ends early")
        value = 0
        for bit in self.bits[self.position:self.position + count]:
            value = (value << 1) | int(bit)
        self.position += count
        return value


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """The ``[H, W]`` bool mask of a Label Studio brush RLE (its alpha channel)."""
    stream = _Bits(rle)
    count = stream.read(32)
    if count != height * width * 4:
        raise LabelerError(f"a Label Studio brush RLE of {count} values does not fit a {width}x{height} image")
    word = stream.read(5) + 1
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
    """One instance a reviewer left in an image: its class name and mask (``None`` for a box alone)."""

    name: str
    mask: np.ndarray


def _polygon_mask(points: list[list[float]], height: int, width: int) -> np.ndarray:
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    corners = np.round(np.asarray(points, dtype=np.float64) * [width / 100, height / 100]).astype(np.int32)
    if len(corners) >= 3:
        cv2.fillPoly(mask, [corners], 1)
    return mask.astype(bool)


def _box_mask(value: dict, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = round(value["x"] * width / 100), round(value["y"] * height / 100)
    x1, y1 = round((value["x"] + value["width"]) * width / 100), round((value["y"] + value["height"]) * height / 100)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def reviewed_instances(result: list[dict], height: int, width: int, where: str) -> list[ReviewedInstance]:
    """The instances of one Label Studio annotation's ``result``: brush and polygon regions as masks;
    a box only where no mask region covers it (a reviewer added a box alone: its filled box).

    Raises:
        LabelerError: a region that cannot be read, naming ``where``.
    """
    masks, boxes = [], []
    for region in result:
        kind, value = region.get("type", "").lower(), region.get("value", {})
        try:
            if kind == "brushlabels":
                masks.append(ReviewedInstance(value["brushlabels"][0], rle_to_mask(value["rle"], height, width)))
            elif kind == "polygonlabels":
                masks.append(ReviewedInstance(value["polygonlabels"][0], _polygon_mask(value["points"], height, width)))
            elif kind == "rectanglelabels":
                boxes.append(ReviewedInstance(value["rectanglelabels"][0], _box_mask(value, height, width)))
        except (KeyError, IndexError, TypeError) as error:
            raise LabelerError(f"{where}: region {region.get('id', '?')}: missing {error}") from None
    alone = [box for box in boxes if not any(
        m.name == box.name and (m.mask & box.mask).sum() >= 0.5 * max(int(m.mask.sum()), 1) for m in masks)]
    return masks + alone
