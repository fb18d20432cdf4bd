"""The Parquet label schema: one row per input image, ok or error.

See docs/formats.md. A detection's mask is COCO compressed RLE whose size is
the row's ``[height, width]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.io.coco import coco_rle

DETECTION_TYPE = pa.struct([
    pa.field("category_id", pa.int64(), nullable=False),
    pa.field("category", pa.string()),  # the class name; filled in when a shard is written
    pa.field("score", pa.float32(), nullable=False),
    pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x, y, w, h in original pixels
    pa.field("area", pa.int64(), nullable=False),
    pa.field("rle", pa.string(), nullable=False),  # COCO compressed RLE counts
])

LABELS_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),  # where the image was read: absolute, or with its protocol
    pa.field("file_name", pa.string(), nullable=False),  # relative to the source root (docs/formats.md)
    pa.field("width", pa.int32(), nullable=False),  # 0 for error rows
    pa.field("height", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),  # reason, null when ok
    pa.field("detections", pa.list_(DETECTION_TYPE), nullable=False),
    pa.field("proposals", pa.int32(), nullable=False),  # SAM2 proposals scored (0 for error rows)
    pa.field("transfer_bytes", pa.int64(), nullable=False),  # bytes from the SAM2 to the DINOv2 stage
])

#: Schema metadata key of a shard's categories: JSON ``[{"id": ..., "name": ...}]`` in bank order.
CATEGORIES_KEY = b"labeler.categories"

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass
class Detections:
    """One image's detections as columns, in decreasing score order.

    Attributes:
        category_id: ``int64 [K]``.
        score: ``float32 [K]``.
        bbox: ``float32 [K, 4]`` x, y, w, h in original pixels.
        area: ``int64 [K]`` mask pixels.
        rle: ``[K]`` COCO compressed RLE strings of the masks.
    """

    category_id: np.ndarray
    score: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    rle: pa.StringArray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                   np.zeros(0, np.int64), pa.array([], pa.string()))

    @classmethod
    def from_dicts(cls, detections: list[dict]) -> "Detections":
        """From dicts with the keys of :data:`DETECTION_TYPE`."""
        if not detections:
            return cls.empty()
        return cls(
            np.array([d["category_id"] for d in detections], np.int64),
            np.array([d["score"] for d in detections], np.float32),
            np.array([d["bbox"] for d in detections], np.float32).reshape(-1, 4),
            np.array([d["area"] for d in detections], np.int64),
            pa.array([d["rle"] for d in detections], pa.string()),
        )

    def __len__(self) -> int:
        return int(self.category_id.shape[0])


@dataclass
class LabelRows:
    """Builds a labels table row by row (one row per image), detections column-wise."""

    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in LABELS_SCHEMA.names})
    detections: list[Detections] = field(default_factory=list)

    def add_ok(self, *, image_id: int, uri: str, width: int, height: int, detections: Detections | None = None,
               proposals: int = 0, transfer_bytes: int = 0, file_name: str | None = None) -> None:
        """A labelled image's row; ``file_name`` defaults to ``uri`` (the writer sets it, :func:`with_file_names`)."""
        self._add(dict(image_id=image_id, uri=uri, file_name=file_name, width=width, height=height, status=STATUS_OK,
                       error=None, proposals=proposals, transfer_bytes=transfer_bytes), detections)

    def add_error(self, *, image_id: int, uri: str, error: str, transfer_bytes: int = 0,
                  file_name: str | None = None) -> None:
        """An error image's row: no size, no detection, the one-line reason."""
        self._add(dict(image_id=image_id, uri=uri, file_name=file_name, width=0, height=0, status=STATUS_ERROR,
                       error=error, proposals=0, transfer_bytes=transfer_bytes), None)

    def _add(self, values: dict, detections: Detections | None) -> None:
        values["file_name"] = values["uri"] if values["file_name"] is None else values["file_name"]
        for name, value in values.items():
            self.columns[name].append(value)
        self.detections.append(detections if detections is not None else Detections.empty())

    def table(self) -> pa.Table:
        arrays = {name: pa.array(values, LABELS_SCHEMA.field(name).type)
                  for name, values in self.columns.items() if name != "detections"}
        arrays["detections"] = _detections_column(self.detections)
        return pa.table([arrays[name] for name in LABELS_SCHEMA.names], schema=LABELS_SCHEMA)


def _detections_column(per_image: list[Detections]) -> pa.ListArray:
    """One list of detection structs per image, built from concatenated columns."""
    sizes = np.array([len(d) for d in per_image], dtype=np.int64)
    offsets = pa.array(np.concatenate(([0], np.cumsum(sizes))).astype(np.int32))
    fields = list(DETECTION_TYPE)
    if per_image:
        bbox = np.concatenate([d.bbox for d in per_image]).astype(np.float32).reshape(-1)
        columns = [
            pa.array(np.concatenate([d.category_id for d in per_image]).astype(np.int64)),
            pa.nulls(int(sizes.sum()), pa.string()),
            pa.array(np.concatenate([d.score for d in per_image]).astype(np.float32)),
            pa.FixedSizeListArray.from_arrays(pa.array(bbox), 4),
            pa.array(np.concatenate([d.area for d in per_image]).astype(np.int64)),
            pa.concat_arrays([d.rle for d in per_image]),
        ]
    else:
        columns = [pa.array([], field.type) for field in fields]
    structs = pa.StructArray.from_arrays(columns, fields=fields)
    return pa.ListArray.from_arrays(offsets, structs, type=pa.list_(DETECTION_TYPE))


def detection_rle(row: dict, detection: dict) -> dict:
    """A detection's mask as pycocotools' RLE: its ``rle`` counts at its row's size."""
    return coco_rle(detection["rle"], row["height"], row["width"])


def relative_file_name(uri: str, root: str) -> str:
    """``uri`` relative to the source root ``root`` when it lies under it, else ``uri`` itself."""
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix):] if uri.startswith(prefix) and len(uri) > len(prefix) else uri


def with_file_names(table: pa.Table, root: str) -> pa.Table:
    """``table`` with its ``file_name`` column made from ``uri`` relative to ``root``."""
    names = pa.array([relative_file_name(uri, root) for uri in table.column("uri").to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("file_name"), LABELS_SCHEMA.field("file_name"), names)


def with_category_names(table: pa.Table, names: dict[int, str]) -> pa.Table:
    """``table`` (of :data:`LABELS_SCHEMA`) with each detection's ``category`` set from ``names`` (id -> name)."""
    column = table.column("detections").combine_chunks()
    structs = column.flatten()  # the values of the rows in view, also for a sliced table
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
    ids = structs.field("category_id").to_numpy(zero_copy_only=False)
    category = pa.array([names.get(int(i)) for i in ids], pa.string())
    fields = list(DETECTION_TYPE)
    arrays = [category if f.name == "category" else structs.field(f.name) for f in fields]
    rebuilt = pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays(arrays, fields=fields),
                                       type=pa.list_(DETECTION_TYPE))
    return table.set_column(table.schema.get_field_index("detections"), LABELS_SCHEMA.field("detections"), rebuilt)
