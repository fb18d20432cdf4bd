"""Read + decode stage (CPU tasks): URIs to model-ready pixel arrays, or error rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from labeler.io import storage
from labeler.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, resize_square
from labeler.io.labels import STATUS_ERROR, STATUS_OK

IO_THREADS = 8


@dataclass
class DecodedImage:
    status: str
    error: str | None
    width: int
    height: int
    sam2_pixels: np.ndarray
    dino_pixels: np.ndarray


def decode_one(uri: str, sam2_size: int, dino_size: int, max_pixels: int) -> DecodedImage:
    """Read and decode one image; any failure becomes an error result, never an exception."""
    blank_sam2 = np.zeros((sam2_size, sam2_size, 3), dtype=np.uint8)
    blank_dino = np.zeros((dino_size, dino_size, 3), dtype=np.uint8)
    try:
        data = storage.read_bytes_retrying(uri)
    except Exception as error:  # noqa: BLE001 - every failure is this image's error row
        reason = f"read failed: {storage.describe_read_error(error)}"
        return DecodedImage(STATUS_ERROR, reason, 0, 0, blank_sam2, blank_dino)
    try:
        pixels = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as error:
        return DecodedImage(STATUS_ERROR, f"decode failed: {error}", 0, 0, blank_sam2, blank_dino)
    height, width = pixels.shape[:2]
    return DecodedImage(
        STATUS_OK, None, width, height,
        resize_square(pixels, sam2_size, "bilinear"),
        resize_square(pixels, dino_size, "bicubic"),
    )


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    sam2_size: int,
    dino_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: ``image_id, uri`` -> decoded columns.

    Adds ``width``, ``height``, ``status``, ``error``, ``sam2_pixels``
    (``[B, S, S, 3]`` uint8, bilinear) and ``dino_pixels`` (``[B, G, G, 3]``
    uint8, bicubic). Reads run on a few threads to overlap storage latency;
    ``storage_options`` are applied in this worker first (:func:`storage.configure`).
    """
    storage.configure(storage_options)
    uris = [str(u) for u in batch["uri"]]
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, max(1, len(uris)))) as pool:
        results = list(pool.map(lambda u: decode_one(u, sam2_size, dino_size, max_pixels), uris))
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
