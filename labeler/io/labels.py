"""The Parquet label schema: one row per input image, ok or error.

See docs/formats.md. A detection's mask is COCO compressed RLE whose size is
the row's ``[height, width]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

DETECTION_TYPE = pa.struct([
    pa.field("category_id", pa.int64(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x, y, w, h in original pixels
    pa.field("area", pa.int64(), nullable=False),
    pa.field("rle", pa.string(), nullable=False),  # COCO compressed RLE counts
])

LABELS_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # 0 for error rows
    pa.field("height", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),  # reason, null when ok
    pa.field("detections", pa.list_(DETECTION_TYPE), nullable=False),
    pa.field("proposals", pa.int32(), nullable=False),  # SAM2 proposals scored (0 for error rows)
    pa.field("transfer_bytes", pa.int64(), nullable=False),  # bytes from the SAM2 to the DINOv2 stage
])

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

    def add(self, image_id: int, uri: str, width: int, height: int, status: str, error: str | None,
            detections: Detections | None = None, proposals: int = 0, transfer_bytes: int = 0) -> None:
        values = (image_id, uri, width, height, status, error, None, proposals, transfer_bytes)
        for name, value in zip(LABELS_SCHEMA.names, values):
            if name != "detections":
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
            pa.array(np.concatenate([d.score for d in per_image]).astype(np.float32)),
            pa.FixedSizeListArray.from_arrays(pa.array(bbox), 4),
            pa.array(np.concatenate([d.area for d in per_image]).astype(np.int64)),
            pa.concat_arrays([d.rle for d in per_image]),
        ]
    else:
        columns = [pa.array([], field.type) for field in fields]
    structs = pa.StructArray.from_arrays(columns, fields=fields)
    return pa.ListArray.from_arrays(offsets, structs, type=pa.list_(DETECTION_TYPE))
