"""The SAM2 input resize: Pillow's bicubic filter, as the reference's image loader uses."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from labeler.io.images import resize_square


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    noise = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2)))


@pytest.mark.parametrize("shape", [(864, 1152), (1500, 400), (37, 600), (1, 1), (3, 7)])
def test_equals_pillows_default_resize(shape):
    """``sam2.utils.misc._load_img_as_tensor`` calls ``Image.resize`` with no filter: bicubic for RGB."""
    pixels = smooth_image(*shape, seed=sum(shape))
    for size in (64, 1024):
        ours = resize_square(pixels, size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, np.asarray(Image.fromarray(pixels).resize((size, size))))


def test_read_only_and_strided_inputs():
    pixels = smooth_image(50, 60, seed=0)
    view = np.asarray(pixels)[:, ::-1]
    view.flags.writeable = False
    assert np.array_equal(resize_square(view, 32), resize_square(view.copy(), 32))
