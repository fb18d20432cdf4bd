"""Matched prompts on hand-made tensors: exact similarities and exact point choice."""

import torch

from labeler.method.matched_prompts import matched_points, prototype_similarity


def test_similarity_is_the_best_cosine_to_any_prototype():
    features = torch.tensor([[[[3.0, 4.0], [1.0, 0.0]], [[0.0, -2.0], [-1.0, -1.0]]]])  # [1, 2, 2, 2]
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    similarity = prototype_similarity(features, prototypes)
    expected = torch.tensor([[[0.8, 1.0], [0.0, -(0.5**0.5)]]])
    assert torch.allclose(similarity, expected, atol=1e-6)


def test_points_with_the_highest_similarity_are_kept_in_grid_order():
    similarity = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[0.7, 0.7], [0.7, 0.2]]])
    grid = torch.tensor([[25.0, 25.0], [75.0, 25.0], [25.0, 75.0], [75.0, 75.0]])  # (x, y), one per cell
    points = matched_points(similarity, grid, input_size=100, count=2)
    assert points.tolist() == [
        [[75.0, 25.0], [25.0, 75.0]],  # 0.9 and 0.5
        [[25.0, 25.0], [75.0, 25.0]],  # a three-way tie at 0.7: grid order decides
    ]


def test_points_read_the_patch_they_fall_in():
    similarity = torch.zeros(1, 3, 3)
    similarity[0, 2, 1] = 1.0  # row 2, column 1: x in [34, 67), y in [67, 100) of a 100-pixel frame
    grid = torch.tensor([[50.0, 90.0], [90.0, 50.0], [10.0, 10.0], [99.9, 99.9]])
    assert matched_points(similarity, grid, 100, 1).tolist() == [[[50.0, 90.0]]]


def test_asking_for_more_points_than_the_grid_keeps_the_grid():
    grid = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    assert matched_points(torch.rand(2, 2, 2), grid, 4, 10).tolist() == [grid.tolist()] * 2
