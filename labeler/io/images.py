"""Image reading and decoding: bytes to an RGB array in the EXIF-corrected frame.

Only the formats in :data:`IMAGE_FORMATS` are opened, each recognised by
Pillow's own signature check on the first bytes, so a hostile file cannot
reach one of Pillow's rarer plugins, and a large file that is not an image is
refused after its first bytes.
"""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.io import storage

#: Default pixel limit: images declaring more pixels are refused before decoding.
DEFAULT_MAX_PIXELS = 100_000_000
#: Default size limit of an image file: 100 megapixels of 16-bit RGB, uncompressed, fit.
DEFAULT_MAX_BYTES = 1 << 30
#: Seconds one image may take to be read and decoded (retries included) before it is an error row.
DEFAULT_READ_TIMEOUT = 300.0
#: Pillow formats labeler reads (MPO is how Pillow names some multi-picture JPEGs).
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "JPEG2000")

# labeler enforces its own, configurable pixel limit (``max_pixels``) on the
# declared size before any pixel is decoded; PIL's fixed global one would
# otherwise refuse first, with its own limit, whatever the user asked for.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (the message says why)."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than the limit (checked before decoding)."""

    def __init__(self, width: int, height: int, limit: int):
        super().__init__(f"{width}x{height} exceeds the pixel limit of {limit}")
        self.width, self.height, self.limit = width, height, limit


@cache
def _openers() -> tuple[str, ...]:
    """The formats of :data:`IMAGE_FORMATS` Pillow opens by name here (it opens MPO through JPEG)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


@cache
def _signature_checks() -> tuple:
    return tuple(Image.OPEN[name][1] for name in _openers() if Image.OPEN[name][1])


@cache
def image_extensions() -> frozenset[str]:
    """File name extensions of :data:`IMAGE_FORMATS` that this Pillow can decode (``.jpg``, ``.avif``, ...)."""
    Image.init()
    return frozenset(ext for ext, name in Image.registered_extensions().items() if name in IMAGE_FORMATS)


def check_image_header(header: bytes) -> None:
    """Raise :class:`ImageDecodeError` unless ``header`` starts like a file of :data:`IMAGE_FORMATS`."""
    if not header:
        raise ImageDecodeError("empty file")
    if not any(accept(header) for accept in _signature_checks()):
        raise ImageDecodeError("not an image file")


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read (bounded, :func:`storage.read_bounded`) and decode one image file.

    Raises:
        ImageDecodeError: not an image or not decodable.
        ReadRefusedError, OSError: the file could not be read (transient errors retried).
    """
    return decode_image(
        storage.read_bytes_retrying(uri, max_bytes=max_bytes, check_header=check_image_header), max_pixels
    )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an ``[H, W, 3]`` uint8 RGB array.

    EXIF orientation is applied, so sizes and labels are in the frame a
    viewer shows. Only the first frame of animations and multi-page files is
    used. High bit-depth, floating-point and palette images are converted to
    8-bit RGB.

    Raises:
        ImageDecodeError: empty, unidentifiable, truncated or corrupt data, or
            a declared size above ``max_pixels`` (checked before decoding). Any
            exception Pillow raises on hostile bytes ends here.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_openers()) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(width, height, max_pixels)
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                return np.asarray(_to_rgb(image), dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file") from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds on hostile bytes
        raise ImageDecodeError(f"corrupt or truncated image: {type(error).__name__}: {error}") from None


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize ``[H, W, 3]`` uint8 pixels to ``[size, size, 3]`` without keeping the aspect
    ratio, with Pillow's bicubic filter (antialiased, rounded to uint8).

    This is how the reference makes its SAM2 input (``sam2.utils.misc``'s
    ``_load_img_as_tensor``: ``Image.resize`` with Pillow's default filter,
    bicubic for RGB), so the pixels both models see match it exactly.
    """
    image = Image.fromarray(np.require(pixels, dtype=np.uint8, requirements=["C"]))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def _peak(values: np.ndarray, floating: bool) -> float:
    """The full scale of 32-bit pixels: the first of (1 for floats,) 255 and 65535 they fit in, else their maximum."""
    top = float(values.max(initial=0.0))
    return next((peak for peak in ((1.0,) if floating else ()) + (255.0, 65535.0) if top <= peak), top)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        array = np.clip(array, 0.0, None)
        peak = 65535.0 if image.mode.startswith("I;16") else _peak(array, image.mode == "F")
        scaled = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")
