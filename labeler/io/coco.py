"""Reading COCO datasets, checked field by field.

Every problem is a :class:`LabelerError` that names the file and the item
(image id, annotation id or field), so a user can fix it in one go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from labeler.errors import LabelerError
from labeler.io import storage


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


def parse_coco(document: Any, source: str) -> CocoDataset:
    """Check and parse a COCO document (already decoded from JSON)."""
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
        category_id = _require(raw, "id", int, where)
        name = raw.get("name", str(category_id))
        if category_id in categories:
            raise LabelerError(f"{source}: duplicate category id {category_id}")
        categories[category_id] = Category(id=category_id, name=str(name))

    images: dict[int, CocoImage] = {}
    for position, raw in enumerate(document["images"]):
        where = f"{source}: images[{position}]"
        image_id = _require(raw, "id", int, where)
        where = f"{source}: image {image_id}"
        file_name = _require(raw, "file_name", str, where)
        width, height = raw.get("width"), raw.get("height")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise LabelerError(f"{where}: field '{key}' must be a positive integer, got {value!r}")
        if image_id in images:
            raise LabelerError(f"{source}: duplicate image id {image_id}")
        images[image_id] = CocoImage(id=image_id, file_name=file_name, width=width, height=height)

    annotations: list[CocoAnnotation] = []
    seen_ids: set[int] = set()
    for position, raw in enumerate(raw_annotations):
        where = f"{source}: annotations[{position}]"
        annotation_id = _require(raw, "id", int, where)
        where = f"{source}: annotation {annotation_id}"
        if annotation_id in seen_ids:
            raise LabelerError(f"{source}: duplicate annotation id {annotation_id}")
        seen_ids.add(annotation_id)
        image_id = _require(raw, "image_id", int, where)
        category_id = _require(raw, "category_id", int, where)
        if image_id not in images:
            raise LabelerError(f"{where}: unknown image_id {image_id}")
        if category_id not in categories:
            raise LabelerError(f"{where}: unknown category_id {category_id}")
        bbox = _require(raw, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise LabelerError(f"{where}: bbox must be four numbers [x, y, w, h], got {bbox!r:.60}")
        segmentation = raw.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, dict)):
            raise LabelerError(f"{where}: segmentation must be a polygon list or an RLE object")
        annotations.append(
            CocoAnnotation(
                id=annotation_id,
                image_id=image_id,
                category_id=category_id,
                bbox=tuple(float(v) for v in bbox),
                segmentation=segmentation or None,
                iscrowd=bool(raw.get("iscrowd", 0)),
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
