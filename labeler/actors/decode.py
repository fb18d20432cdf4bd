"""Read + decode stage (CPU tasks): URIs to model-ready pixel arrays, or error rows.

An error row carries no pixels: when a batch has one, its pixel columns are
ragged (an object array whose error entries are ``0 x 0 x 3``), and the
model stages pick the rows they use with :func:`stack_rows`. With tiling
(``--tile``), a row also has ``tile_boxes``: ``int32 [n, 4]`` windows of the
image (:mod:`labeler.method.tiles`), none for an image labelled whole, and
every row's ``sam2_pixels`` are a stack of SAM2 inputs, ``[n, S, S, 3]``
(one for an image labelled whole, none for an error row), so that all rows of
a tiled run have pixels of one rank, as Ray Data's tensor columns need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from labeler.io import storage
from labeler.io.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_TIMEOUT,
    ImageDecodeError,
    ImageTooLargeError,
    read_image,
    resize_square,
)
from labeler.io.labels import STATUS_ERROR, STATUS_OK
from labeler.io.proposal_payload import object_column
from labeler.io.timed_map import map_with_deadline
from labeler.method.tiles import Tiling
from labeler.run.progress import report

if TYPE_CHECKING:
    from ray.actor import ActorHandle

IO_THREADS = 8


NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
NO_PIXEL_STACK = np.zeros((0, 0, 0, 3), dtype=np.uint8)  # an error row's, in a tiled run
NO_TILES = np.zeros((0, 4), dtype=np.int32)


@dataclass
class DecodedImage:
    status: str
    error: str | None
    width: int
    height: int
    sam2_pixels: np.ndarray
    tiles: np.ndarray = field(default_factory=lambda: NO_TILES)  # [n, 4] x0, y0, x1, y1; none for an image whole


def _error(reason: str) -> DecodedImage:
    return DecodedImage(STATUS_ERROR, reason, 0, 0, NO_PIXELS)


def _too_large(error: ImageTooLargeError, tiled: bool) -> str:
    """The reason of an image over the pixel limit: ``--tile-max-pixels`` for one that would be ``tiled``, else
    ``--max-pixels``, which tiling lifts."""
    size = f"{error.width}x{error.height} ({error.width * error.height:,} pixels)"
    if tiled:
        return f"decode failed: {size} is over --tile-max-pixels {error.limit:,}"
    return (f"decode failed: {size} is over --max-pixels {error.limit:,}: label it in tiles with --tile auto, "
            "or raise --max-pixels")


def model_input(pixels: np.ndarray, sam2_size: int, tiling: Tiling | None) -> tuple[np.ndarray, np.ndarray]:
    """The SAM2 input of ``[H, W, 3]`` pixels: ``[S, S, 3]`` without ``tiling``; with it, the tiles'
    ``[n, S, S, 3]`` and their windows, or ``[1, S, S, 3]`` and none for an image labelled whole."""
    if tiling is None:
        return resize_square(pixels, sam2_size), NO_TILES
    tiles = tiling.tiles(pixels.shape[:2])
    if not tiles:
        return resize_square(pixels, sam2_size)[None], NO_TILES
    inputs = np.empty((len(tiles), sam2_size, sam2_size, 3), dtype=np.uint8)
    for number, (x0, y0, x1, y1) in enumerate(tiles):
        inputs[number] = resize_square(pixels[y0:y1, x0:x1], sam2_size)
    return inputs, np.asarray(tiles, dtype=np.int32)


def pixel_column(arrays: list[np.ndarray]) -> np.ndarray:
    """One array per row: stacked when all have one shape, else an object array (ragged)."""
    if len({a.shape for a in arrays}) <= 1 and arrays:
        return np.stack(arrays)
    return object_column(arrays)


def stack_rows(column: np.ndarray, rows) -> np.ndarray:
    """``[len(rows), ...]``: the arrays of ``rows`` of a (possibly ragged) column."""
    if column.dtype != object:
        return column[rows]
    return np.stack([np.asarray(column[row]) for row in rows])


def decode_one(uri: str, sam2_size: int, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES,
               tiling: Tiling | None = None) -> DecodedImage:
    """Read and decode one image, resized to the SAM2 input (or cut into tiles, each resized, when ``tiling``
    cuts it; an image labelled whole still has at most ``max_pixels``); any failure becomes an error
    result, never an exception. (The DINOv2 input is made from the SAM2 input on the
    GPU, as the reference makes it: :meth:`Dinov2Encoder.target_features`.)"""
    limit = max(max_pixels, tiling.max_pixels) if tiling is not None else max_pixels
    try:
        pixels = read_image(uri, max_pixels=limit, max_bytes=max_bytes)
        height, width = pixels.shape[:2]
        if height * width > max_pixels and not (tiling is not None and tiling.tiles((height, width))):
            raise ImageTooLargeError(width, height, max_pixels)
    except ImageTooLargeError as error:
        return _error(_too_large(error, tiled=error.limit != max_pixels))
    except ImageDecodeError as error:
        return _error(f"decode failed: {error}")
    except Exception as error:  # noqa: BLE001 - every failure is this image's error row
        reason = storage.undecodable_name_reason(uri) if isinstance(error, FileNotFoundError) else None
        return _error(f"read failed: {reason or storage.describe_read_error(error)}")
    try:
        return DecodedImage(STATUS_OK, None, width, height, *model_input(pixels, sam2_size, tiling))
    except Exception as error:  # noqa: BLE001 - out of memory on a huge image, ...
        return _error(f"decode failed: resizing: {type(error).__name__}: {error}")


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    sam2_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    storage_options: dict | None = None,
    tracker: ActorHandle | None = None,
    tiling: Tiling | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: ``image_id, uri`` -> decoded columns.

    Adds ``width``, ``height``, ``status``, ``error`` and ``sam2_pixels``
    (``[B, S, S, 3]`` uint8, :func:`resize_square`), ragged when an error row
    has none, and with ``tiling`` the ``tile_boxes`` (module doc). Reads run on a few threads to overlap storage latency,
    each image within ``read_timeout`` seconds; ``storage_options`` are
    applied in this worker first (:func:`storage.configure`). The rows are
    reported to ``tracker`` (:mod:`labeler.run.progress`).
    """
    storage.configure(storage_options)
    uris = [str(u) for u in batch["uri"]]
    results = map_with_deadline(
        lambda uri: decode_one(uri, sam2_size, max_pixels, max_bytes, tiling),
        uris,
        threads=IO_THREADS,
        timeout=read_timeout,
        on_timeout=lambda uri: _error(f"read failed: timed out after {read_timeout:g} s"),
    )
    report(tracker, "read", len(uris))
    columns = {
        "image_id": np.asarray(batch["image_id"], dtype=np.int64),
        "uri": np.asarray(uris, dtype=object),
        "width": np.array([r.width for r in results], dtype=np.int32),
        "height": np.array([r.height for r in results], dtype=np.int32),
        "status": np.array([r.status for r in results], dtype=object),
        "error": np.array([r.error or "" for r in results], dtype=object),
        "sam2_pixels": pixel_column([r.sam2_pixels if r.status == STATUS_OK or tiling is None else NO_PIXEL_STACK
                                     for r in results]),
    }
    if tiling is not None:
        columns["tile_boxes"] = object_column([r.tiles for r in results])
    return columns
