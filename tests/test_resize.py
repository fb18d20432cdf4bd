"""The model-input resize: torch's antialiased uint8 kernel against PIL's filters."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from labeler.io.images import resize_square

PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def pil_resize(pixels: np.ndarray, size: int, resample: str) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), PIL_FILTERS[resample]))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    noise = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2)))


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(864, 1152), (1500, 400), (37, 600), (1, 1), (3, 7)])
def test_within_two_grey_levels_of_pil(shape, resample):
    pixels = smooth_image(*shape, seed=sum(shape))
    for size in (64, 518):
        ours = resize_square(pixels, size, resample)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        difference = np.abs(ours.astype(int) - pil_resize(pixels, size, resample).astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.2


def test_sharp_edges_saturate_instead_of_wrapping():
    """Bicubic overshoots at a black/white edge: values clamp to 0..255, as PIL's do."""
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    ours = resize_square(pixels, 97, "bicubic")
    assert np.abs(ours.astype(int) - pil_resize(pixels, 97, "bicubic").astype(int)).max() <= 2
    assert ours[:, :40].max() < 128 and ours[:, -40:].min() > 128


def test_read_only_and_strided_inputs():
    pixels = smooth_image(50, 60, seed=0)
    view = np.asarray(pixels)[:, ::-1]
    view.flags.writeable = False
    assert np.array_equal(resize_square(view, 32, "bilinear"), resize_square(view.copy(), 32, "bilinear"))
