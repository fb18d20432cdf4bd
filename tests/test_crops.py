"""Crop geometry (docs/method.md 1.2), in the middle of an image and at its borders."""

import torch

from labeler.method.crops import context_crop_box, crop_reference


def test_square_window_with_context_inside_the_image():
    # box 40x20 centred at (70, 60); side = 40 * 1.2 = 48
    assert context_crop_box((50, 50, 40, 20), (200, 300), 0.2) == (46, 36, 94, 84)


def test_window_clipped_at_top_left_border():
    # centre (10, 10), side 48 -> [-14, 34] clipped to [0, 34]
    assert context_crop_box((0, 0, 20, 20 * 2), (100, 100), 0.2) == (0, 0, 34, 44)


def test_window_clipped_at_bottom_right_border():
    assert context_crop_box((80, 90, 20, 10), (100, 100), 0.2) == (78, 83, 100, 100)


def test_window_covers_whole_image_for_huge_box():
    assert context_crop_box((0, 0, 64, 48), (48, 64), 0.2) == (0, 0, 64, 48)


def test_zero_context_is_the_bounding_square():
    assert context_crop_box((10, 10, 10, 10), (50, 50), 0.0) == (10, 10, 20, 20)


def test_window_bounds_are_truncated_as_the_reference_does():
    """Corners int()-truncated to (10, 20, 41, 35); side 31 * 1.2 = 37.2 around (25.5, 27.5);
    bounds int(6.9), int(8.9), int(44.1), int(46.1). (Floor and ceil of the exact box would
    give (7, 8, 45, 47).)"""
    assert context_crop_box((10.7, 20.2, 30.6, 15.5), (100, 100), 0.2) == (6, 8, 44, 46)


def test_window_never_empty_on_the_last_pixel():
    x0, y0, x1, y1 = context_crop_box((99.5, 99.5, 0.0, 0.0), (100, 100), 0.2)
    assert x1 > x0 and y1 > y0 and x1 <= 100 and y1 <= 100


def test_crop_sizes_and_fractional_mask_weights():
    image = torch.zeros(3, 10, 10, dtype=torch.uint8)
    image[:, :, 5:] = 255
    mask = torch.zeros(10, 10)
    mask[2:8, 2:8] = 1
    crop, weights = crop_reference(image, mask, (0, 0, 10, 10), input_size=20, grid_size=5)
    assert crop.shape == (3, 20, 20) and weights.shape == (5, 5) and crop.dtype == torch.float32
    # Pixels on the 0..1 scale, bicubic without clamping: the black/white edge overshoots both ways.
    assert crop[:, :, :2].eq(0).all() and crop[:, :, -2:].eq(1).all()
    assert crop.min() < 0 and crop.max() > 1
    # Bilinear 10 -> 20 puts output column j at source x = (j + 0.5) / 2 - 0.5; nearest
    # 20 -> 5 keeps columns 0, 4, 8, 12, 16, i.e. x = -0.25, 1.75, 3.75, 5.75, 7.75.
    profile = torch.tensor([0.0, 0.75, 1.0, 1.0, 0.25])
    assert torch.allclose(weights, profile[:, None] * profile[None, :])


def test_mask_edge_gives_fractional_weight():
    image = torch.zeros(3, 3, 3)
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    _, weights = crop_reference(image, mask, (0, 0, 3, 3), input_size=6, grid_size=6)
    # 3 -> 6 bilinear: column 1 of the output sits a quarter of the way from pixel 0 to pixel 1.
    assert torch.allclose(weights[0], torch.tensor([0.0, 0.25, 0.75, 1.0, 1.0, 1.0]))
