"""Image decoding: bytes to an RGB array in the EXIF-corrected frame."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit: images declaring more pixels are refused before decoding.
DEFAULT_MAX_PIXELS = 100_000_000

# labeler enforces its own, configurable pixel limit (``max_pixels``) on the
# declared size before any pixel is decoded; PIL's fixed global one would
# otherwise refuse first, with its own limit, whatever the user asked for.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (the message says why)."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an ``[H, W, 3]`` uint8 RGB array.

    EXIF orientation is applied, so sizes and labels are in the frame a
    viewer shows. Only the first frame of animations and multi-page files is
    used. High bit-depth and palette images are converted to 8-bit RGB.

    Raises:
        ImageDecodeError: empty, unidentifiable, truncated or corrupt data, or
            a declared size above ``max_pixels`` (checked before decoding).
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(f"{width}x{height} exceeds the pixel limit of {max_pixels}")
                image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image)
                return np.asarray(_to_rgb(image), dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def resize_square(pixels: np.ndarray, size: int, resample: str) -> np.ndarray:
    """Resize ``[H, W, 3]`` uint8 pixels to ``[size, size, 3]`` without keeping the aspect
    ratio, with an antialiased ``bilinear`` or ``bicubic`` filter.

    torch's uint8 kernel (the one torchvision's ``Resize`` runs, as SAM2's own
    transforms do): within 2 grey levels of PIL's filters and 3 to 9 times
    faster than them on 1 to 12 megapixel images (docs/PERFORMANCE.md).
    """
    image = torch.from_numpy(np.require(pixels, dtype=np.uint8, requirements=["C", "W"])).permute(2, 0, 1)[None]
    resized = F.interpolate(image, size=(size, size), mode=resample, align_corners=False, antialias=True)
    return resized[0].permute(1, 2, 0).contiguous().numpy()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")
