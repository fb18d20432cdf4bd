"""The Parquet label schema: one row per input image, ok or error.

See docs/formats.md. A detection's mask is COCO compressed RLE whose size is
the row's ``[height, width]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
class LabelRows:
    """Builds a labels table row by row (one row per image)."""

    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in LABELS_SCHEMA.names})

    def add(self, image_id: int, uri: str, width: int, height: int, status: str, error: str | None,
            detections: list[dict], proposals: int = 0, transfer_bytes: int = 0) -> None:
        values = (image_id, uri, width, height, status, error, detections, proposals, transfer_bytes)
        for name, value in zip(LABELS_SCHEMA.names, values):
            self.columns[name].append(value)

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=LABELS_SCHEMA)
