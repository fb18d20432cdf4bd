"""Reading COCO datasets, checked field by field.

Every problem is a :class:`LabelerError` that names the file and the item
(image id, annotation id or field), so a user can fix it in one go.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labeler.errors import LabelerError
from labeler.io import storage

#: Ids are stored as int64 (Parquet, Arrow, numpy): a larger one is refused when read.
MAX_ID = (1 << 63) - 1


def coco_rle(counts: str | bytes, height: int, width: int) -> dict:
    """pycocotools' compressed RLE of one mask of a ``height`` x ``width`` image: ``{"size", "counts"}``."""
    return {"size": [int(height), int(width)], "counts": counts}


@dataclass(frozen=True)
class Category:
    """A COCO category: the dataset's own id (not necessarily contiguous)."""

    id: int
    name: str


@dataclass(frozen=True)
class CocoImage:
    """A COCO image entry."""

    id: int
    file_name: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class CocoAnnotation:
    """A COCO annotation. ``segmentation`` is a polygon list, an RLE dict, or None (box only)."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    segmentation: Any = None
    iscrowd: bool = False
    area: float | None = None
    negative: bool = False  # a reference of what the class is not ("negative": true; docs/formats.md)

    @property
    def has_mask(self) -> bool:
        return bool(self.segmentation)


@dataclass
class CocoDataset:
    """A parsed COCO dataset with lookups by id."""

    source: str
    images: dict[int, CocoImage]
    annotations: list[CocoAnnotation]
    categories: dict[int, Category]
    extra: dict[str, Any] = field(default_factory=dict)


def name_key(name: str) -> str:
    """What two class names must not share: their NFKC form, trimmed (``"Dog"`` and ``" Dog"`` are one class)."""
    return unicodedata.normalize("NFKC", name).strip()


def check_class_names(categories: list[Category], where: str) -> None:
    """Class names that every command can key by: valid Unicode, not blank, and distinct.

    Thresholds, ``--classes``, review merges and reports name classes; two classes
    of one name would be merged there silently.

    Raises:
        LabelerError: naming the category (both ids for a duplicate).
    """
    seen: dict[str, int] = {}
    for category in categories:
        try:
            category.name.encode("utf-8")
        except UnicodeEncodeError:
            raise LabelerError(f"{where}: category {category.id}: its name {category.name!r} is not valid Unicode "
                               "(a lone surrogate)") from None
        key = name_key(category.name)
        if not key:
            raise LabelerError(f"{where}: category {category.id}: its name is blank")
        if key in seen:
            raise LabelerError(f"{where}: categories {seen[key]} and {category.id} are both named {key!r}; "
                               "give every class its own name")
        seen[key] = category.id


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict):
        raise LabelerError(f"{where}: expected an object, got {type(mapping).__name__}")
    if key not in mapping:
        raise LabelerError(f"{where}: missing field '{key}'")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise LabelerError(f"{where}: field '{key}' must be {names}, got {value!r:.60}")
    return value


def _id(mapping: Any, key: str, where: str) -> int:
    value = _require(mapping, key, int, where)
    if not 0 <= value <= MAX_ID:
        raise LabelerError(f"{where}: field '{key}' {value} is not in [0, 2^63)")
    return value


def coordinate_slack(side: int) -> float:
    """How far outside an image a box or polygon coordinate may lie (rounding, pixel-edge conventions)."""
    return max(2.0, 0.01 * side)


def check_bbox(bbox: Any, where: str, image_hw: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]``: four finite numbers, non-negative sizes, inside the image when its size is known."""
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise LabelerError(f"{where}: bbox must be four numbers [x, y, w, h], got {bbox!r:.60}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise LabelerError(f"{where}: bbox {bbox!r:.60} holds NaN or infinity")
    if w < 0 or h < 0:
        raise LabelerError(f"{where}: bbox {bbox!r:.60} has a negative width or height")
    if image_hw is not None:
        height, width = image_hw
        if not (-coordinate_slack(width) <= x and x + w <= width + coordinate_slack(width)
                and -coordinate_slack(height) <= y and y + h <= height + coordinate_slack(height)):
            raise LabelerError(f"{where}: bbox {bbox!r:.60} lies outside the {width}x{height} image")
    return x, y, w, h


def check_segmentation(segmentation: Any, where: str, image_hw: tuple[int, int] | None = None) -> None:
    """The shape and numbers of a COCO segmentation, before any of it reaches pycocotools.

    Polygons: lists of an even number (at least 6) of finite coordinates,
    inside the image when its size is known (pycocotools allocates by the
    coordinates: a NaN or a huge value took it to tens of GB). RLE: a
    ``size`` of two positive integers (the image's, when known) and
    ``counts`` a string or a list of non-negative integers; their sum is
    checked where the mask is decoded (:func:`labeler.io.masks.segmentation_to_mask`).
    """
    if isinstance(segmentation, list):
        for part, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise LabelerError(f"{where}: polygon {part} must be a list of x, y pairs, at least 3 points")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
                raise LabelerError(f"{where}: polygon {part} holds something other than numbers")
            points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(points).all():
                raise LabelerError(f"{where}: polygon {part} holds NaN or infinity")
            if image_hw is not None:
                height, width = image_hw
                low = np.array([-coordinate_slack(width), -coordinate_slack(height)])
                high = np.array([width + coordinate_slack(width), height + coordinate_slack(height)])
                if (points < low).any() or (points > high).any():
                    raise LabelerError(f"{where}: polygon {part} has points outside the {width}x{height} image")
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise LabelerError(f"{where}: RLE needs 'size' [h, w] of two positive integers, got {size!r:.40}")
        if image_hw is not None and tuple(size) != tuple(image_hw):
            raise LabelerError(f"{where}: RLE size {size} differs from the image size {list(image_hw)}")
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                raise LabelerError(f"{where}: RLE 'counts' must hold non-negative integers")
        elif not isinstance(counts, str):
            raise LabelerError(f"{where}: RLE 'counts' must be a list or a string")
    else:
        raise LabelerError(f"{where}: segmentation must be a polygon list or an RLE object")


def parse_coco(document: Any, source: str) -> CocoDataset:
    """Check and parse a COCO document (already decoded from JSON).

    Every id is a non-negative 64-bit integer; every number is finite and in
    range (boxes and polygons inside their image where its size is given).
    """
    if not isinstance(document, dict):
        raise LabelerError(f"{source}: a COCO file must hold a JSON object")
    for key in ("images", "categories"):
        if not isinstance(document.get(key), list):
            raise LabelerError(f"{source}: missing or non-list '{key}'")
    raw_annotations = document.get("annotations", [])
    if not isinstance(raw_annotations, list):
        raise LabelerError(f"{source}: 'annotations' must be a list")

    categories: dict[int, Category] = {}
    for position, raw in enumerate(document["categories"]):
        where = f"{source}: categories[{position}]"
        category_id = _id(raw, "id", where)
        name = raw.get("name", str(category_id))
        if category_id in categories:
            raise LabelerError(f"{source}: duplicate category id {category_id}")
        categories[category_id] = Category(id=category_id, name=str(name))

    images: dict[int, CocoImage] = {}
    for position, raw in enumerate(document["images"]):
        where = f"{source}: images[{position}]"
        image_id = _id(raw, "id", where)
        where = f"{source}: image {image_id}"
        file_name = _require(raw, "file_name", str, where)
        width, height = raw.get("width"), raw.get("height")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 31):
                raise LabelerError(f"{where}: field '{key}' must be a positive integer, got {value!r:.40}")
        if image_id in images:
            raise LabelerError(f"{source}: duplicate image id {image_id}")
        images[image_id] = CocoImage(id=image_id, file_name=file_name, width=width, height=height)

    annotations: list[CocoAnnotation] = []
    seen_ids: set[int] = set()
    for position, raw in enumerate(raw_annotations):
        where = f"{source}: annotations[{position}]"
        annotation_id = _id(raw, "id", where)
        where = f"{source}: annotation {annotation_id}"
        if annotation_id in seen_ids:
            raise LabelerError(f"{source}: duplicate annotation id {annotation_id}")
        seen_ids.add(annotation_id)
        image_id = _id(raw, "image_id", where)
        category_id = _id(raw, "category_id", where)
        if image_id not in images:
            raise LabelerError(f"{where}: unknown image_id {image_id}")
        if category_id not in categories:
            raise LabelerError(f"{where}: unknown category_id {category_id}")
        image = images[image_id]
        image_hw = (image.height, image.width) if image.width and image.height else None
        bbox = check_bbox(_require(raw, "bbox", list, where), where, image_hw)
        segmentation = raw.get("segmentation") or None
        if segmentation is not None:
            check_segmentation(segmentation, where, image_hw)
        area = raw.get("area")
        if area is not None and (isinstance(area, bool) or not isinstance(area, (int, float))
                                 or not math.isfinite(area) or area < 0):
            raise LabelerError(f"{where}: area must be a finite non-negative number, got {area!r:.40}")
        iscrowd = raw.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise LabelerError(f"{where}: iscrowd must be 0 or 1, got {iscrowd!r:.40}")
        negative = raw.get("negative", False)
        if not isinstance(negative, bool):
            raise LabelerError(f"{where}: negative must be true or false, got {negative!r:.40}")
        annotations.append(
            CocoAnnotation(
                id=annotation_id,
                image_id=image_id,
                category_id=category_id,
                bbox=bbox,
                segmentation=segmentation,
                iscrowd=bool(iscrowd),
                area=None if area is None else float(area),
                negative=negative,
            )
        )
    extra = {k: v for k, v in document.items() if k not in {"images", "annotations", "categories"}}
    return CocoDataset(source=source, images=images, annotations=annotations, categories=categories, extra=extra)


def read_coco(uri: str) -> CocoDataset:
    """Read and check a COCO JSON file from a path or fsspec URI."""
    data = storage.read_bytes(uri)
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelerError(f"{uri}: malformed JSON: {error}") from None
    return parse_coco(document, uri)
