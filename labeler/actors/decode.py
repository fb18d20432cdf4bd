"""Read + decode stage (CPU tasks): URIs to model-ready pixel arrays, or error rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from labeler.io import storage
from labeler.io.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError, read_image, resize_square
from labeler.io.labels import STATUS_ERROR, STATUS_OK
from labeler.io.timed_map import map_with_deadline
from labeler.progress import report

if TYPE_CHECKING:
    from ray.actor import ActorHandle

IO_THREADS = 8
#: Seconds one image may take to be read and decoded (retries included) before it is an error row.
DEFAULT_READ_TIMEOUT = 300.0


@dataclass
class DecodedImage:
    status: str
    error: str | None
    width: int
    height: int
    sam2_pixels: np.ndarray
    dino_pixels: np.ndarray


def _error(reason: str, sam2_size: int, dino_size: int) -> DecodedImage:
    blank_sam2 = np.zeros((sam2_size, sam2_size, 3), dtype=np.uint8)
    blank_dino = np.zeros((dino_size, dino_size, 3), dtype=np.uint8)
    return DecodedImage(STATUS_ERROR, reason, 0, 0, blank_sam2, blank_dino)


def decode_one(
    uri: str, sam2_size: int, dino_size: int, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> DecodedImage:
    """Read and decode one image; any failure becomes an error result, never an exception."""
    try:
        pixels = read_image(uri, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageDecodeError as error:
        return _error(f"decode failed: {error}", sam2_size, dino_size)
    except Exception as error:  # noqa: BLE001 - every failure is this image's error row
        return _error(f"read failed: {storage.describe_read_error(error)}", sam2_size, dino_size)
    try:
        height, width = pixels.shape[:2]
        return DecodedImage(
            STATUS_OK, None, width, height,
            resize_square(pixels, sam2_size, "bilinear"),
            resize_square(pixels, dino_size, "bicubic"),
        )
    except Exception as error:  # noqa: BLE001 - out of memory on a huge image, ...
        return _error(f"decode failed: resizing: {type(error).__name__}: {error}", sam2_size, dino_size)


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    sam2_size: int,
    dino_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    storage_options: dict | None = None,
    tracker: ActorHandle | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: ``image_id, uri`` -> decoded columns.

    Adds ``width``, ``height``, ``status``, ``error``, ``sam2_pixels``
    (``[B, S, S, 3]`` uint8, bilinear) and ``dino_pixels`` (``[B, G, G, 3]``
    uint8, bicubic). Reads run on a few threads to overlap storage latency,
    each image within ``read_timeout`` seconds; ``storage_options`` are
    applied in this worker first (:func:`storage.configure`). The rows are
    reported to ``tracker`` (:mod:`labeler.progress`).
    """
    storage.configure(storage_options)
    uris = [str(u) for u in batch["uri"]]
    results = map_with_deadline(
        lambda uri: decode_one(uri, sam2_size, dino_size, max_pixels, max_bytes),
        uris,
        threads=IO_THREADS,
        timeout=read_timeout,
        on_timeout=lambda uri: _error(f"read failed: timed out after {read_timeout:g} s", sam2_size, dino_size),
    )
    report(tracker, "read", len(uris))
    return {
        "image_id": np.asarray(batch["image_id"], dtype=np.int64),
        "uri": np.asarray(uris, dtype=object),
        "width": np.array([r.width for r in results], dtype=np.int32),
        "height": np.array([r.height for r in results], dtype=np.int32),
        "status": np.array([r.status for r in results], dtype=object),
        "error": np.array([r.error or "" for r in results], dtype=object),
        "sam2_pixels": np.stack([r.sam2_pixels for r in results]),
        "dino_pixels": np.stack([r.dino_pixels for r in results]),
    }
