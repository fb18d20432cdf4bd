"""Kept proposals (``labeler run --keep-proposals``): per image, what scoring needs that does not depend on the
bank, so that ``labeler rescore`` can label again with another bank without the models (docs/formats.md,
"Kept proposals").

One row per label row, in the label shard's order (an error row's fields are null):

    image_id       int64
    lowres_height  int32    the low-res mask grid
    lowres_width   int32
    band_radius    int32    the proposal payload's boundary band (labeler.io.proposal_payload)
    rle_blob       binary   the proposals' binary masks, COCO RLE strings back to back
    rle_lengths    binary   int32 little-endian: each string's byte length
    band_logits    binary   float32 little-endian: the logits on the boundary band
    iou            binary   float32 little-endian: SAM2's predicted IoUs
    embeddings     binary   little-endian [proposals, dim] L2-normalised mask embeddings, float32 or float16
    tiles          binary   int32 little-endian [tiles, 6] for an image labelled in tiles (``--tile``): each
                            tile's x0, y0, x1, y1 and its proposals and band logits, in payload order
                            (labeler.actors.tiles.TILE_FIELDS); null for an image labelled whole

The proposals are those that passed the predicted-IoU filter, in prompt order, exactly as the SAM2 stage
handed them to the scoring stage (the same exact form: the final masks they give are bit for bit those of
the float32 logits); the embeddings are the scoring stage's own, before any bank is used. The file's footer
says the embeddings' dtype and width, and the encoder and SAM2 model they came from (:data:`KEPT_KEY`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from labeler.io.proposal_payload import ProposalPayload

#: Footer key: ``{"embedding_dtype", "embedding_dim", "encoder", "sam2"}``.
KEPT_KEY = b"labeler.kept_proposals"
#: Columns of a scoring stage's output batch that carry the kept proposals to the writer.
KEPT_PREFIX = "kept_"
#: Embedding dtypes (``--keep-proposals``) and how they are stored.
EMBEDDING_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

KEPT_SCHEMA = pa.schema([
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("lowres_height", pa.int32()),
    pa.field("lowres_width", pa.int32()),
    pa.field("band_radius", pa.int32()),
    pa.field("rle_blob", pa.binary()),
    pa.field("rle_lengths", pa.binary()),
    pa.field("band_logits", pa.binary()),
    pa.field("iou", pa.binary()),
    pa.field("embeddings", pa.binary()),
    pa.field("tiles", pa.binary()),
])


@dataclass
class KeptProposals:
    """One image's kept proposals: the hand-off payload, the ``[P, D]`` embeddings, and for a tiled image its
    ``[n, 6]`` tile table."""

    payload: ProposalPayload
    embeddings: np.ndarray
    tiles: np.ndarray | None = None


def kept_table(image_ids: list[int], kept: list[KeptProposals | None], embedding_dtype: str) -> pa.Table:
    """The kept-proposals rows of a batch of label rows (None for an error row); no footer yet
    (:func:`with_footer`, when the file is written)."""
    dtype = EMBEDDING_DTYPES[embedding_dtype]

    def column(make) -> list:
        return [None if k is None else make(k) for k in kept]

    return pa.table({
        "image_id": image_ids,
        "lowres_height": column(lambda k: k.payload.height),
        "lowres_width": column(lambda k: k.payload.width),
        "band_radius": column(lambda k: k.payload.band_radius),
        "rle_blob": column(lambda k: k.payload.rle_blob),
        "rle_lengths": column(lambda k: k.payload.rle_lengths.astype("<i4").tobytes()),
        "band_logits": column(lambda k: k.payload.band_logits.astype("<f4").tobytes()),
        "iou": column(lambda k: k.payload.iou.astype("<f4").tobytes()),
        "embeddings": column(lambda k: np.ascontiguousarray(k.embeddings, dtype=dtype).tobytes()),
        "tiles": [None if k is None or k.tiles is None else k.tiles.astype("<i4").tobytes() for k in kept],
    }, schema=KEPT_SCHEMA)


def with_footer(table: pa.Table, footer: dict[str, Any]) -> pa.Table:
    """``table`` with its file footer: ``{"embedding_dtype", "embedding_dim", "encoder", "sam2"}``."""
    return table.replace_schema_metadata({KEPT_KEY: json.dumps(footer, sort_keys=True).encode()})


def footer(table_or_schema: pa.Table | pa.Schema) -> dict[str, Any]:
    """The footer of a kept-proposals table (:data:`KEPT_KEY`); KeyError when it is not one."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    return json.loads((schema.metadata or {})[KEPT_KEY])


def kept_of_row(row: dict[str, Any], embedding_dtype: str, embedding_dim: int) -> KeptProposals:
    """One row (``pyarrow`` ``to_pylist``, or the same fields from a batch) back to its proposals."""
    lengths = np.frombuffer(row["rle_lengths"], dtype="<i4").astype(np.int32)
    payload = ProposalPayload(
        rle_blob=bytes(row["rle_blob"]), rle_lengths=lengths,
        band_logits=np.frombuffer(row["band_logits"], dtype="<f4").astype(np.float32),
        iou=np.frombuffer(row["iou"], dtype="<f4").astype(np.float32),
        height=int(row["lowres_height"]), width=int(row["lowres_width"]), band_radius=int(row["band_radius"]),
    )
    embeddings = np.frombuffer(row["embeddings"], dtype=EMBEDDING_DTYPES[embedding_dtype])
    tiles = None if row.get("tiles") is None else np.frombuffer(row["tiles"], dtype="<i4").astype(np.int32).reshape(-1, 6)
    return KeptProposals(payload, embeddings.reshape(lengths.size, embedding_dim if lengths.size else 0), tiles)


def embeddings_tensor(kept: KeptProposals, device: torch.device | str) -> torch.Tensor:
    """The embeddings as float32 on ``device`` (float16 ones widened: what rescoring computes with)."""
    return torch.from_numpy(kept.embeddings.astype(np.float32)).to(device)


def with_kept_columns(labels: pa.Table, kept: pa.Table) -> pa.Table:
    """A scoring stage's output: the label rows with the kept proposals as :data:`KEPT_PREFIX` columns."""
    for name in kept.column_names:
        labels = labels.append_column(KEPT_PREFIX + name, kept.column(name))
    return labels


def split_kept(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """A scoring stage's output back to its label rows and its kept proposals (None when not kept)."""
    names = [name for name in table.column_names if name.startswith(KEPT_PREFIX)]
    if not names:
        return table, None
    kept = pa.table({name[len(KEPT_PREFIX):]: table.column(name) for name in names})
    return table.drop_columns(names), kept.cast(KEPT_SCHEMA)
