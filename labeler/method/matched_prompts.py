"""Matched prompts (``--prompts matched``, our option, not the paper's).

Instead of prompting SAM2 at every point of the regular grid, prompt it at
the grid points whose DINOv2 patch feature best matches any class
prototype. Regions that resemble no reference class get no prompt, which
cuts the mask decoder's work (the dominant cost) by the fraction of points
dropped. Objects whose every grid point falls outside the chosen set are
missed, so this trades recall for speed; the full grid stays the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototype_similarity(features: torch.Tensor, class_prototypes: torch.Tensor) -> torch.Tensor:
    """Best cosine similarity of each patch to any class prototype.

    Args:
        features: ``[B, g, g, D]`` DINOv2 patch features.
        class_prototypes: ``[C, D]`` unit-norm class prototypes.

    Returns:
        ``[B, g, g]`` similarities in [-1, 1].
    """
    patches = F.normalize(features.float(), dim=-1)
    return (patches @ class_prototypes.T.to(patches)).amax(dim=-1)


def matched_points(similarity: torch.Tensor, grid: torch.Tensor, input_size: int, count: int) -> torch.Tensor:
    """The ``count`` grid points with the highest similarity, per image.

    Each point reads the similarity of the patch it falls in. Ties keep
    grid order; the chosen points are returned in grid order.

    Args:
        similarity: ``[B, g, g]`` from :func:`prototype_similarity`.
        grid: ``[N, 2]`` (x, y) prompt points in the SAM2 input frame.
        input_size: side of the SAM2 input frame in pixels.
        count: points to keep per image (at most N).

    Returns:
        ``[B, count, 2]`` points.
    """
    cells = similarity.shape[-1]
    cell = (grid.to(similarity.device) / input_size * cells).long().clamp(0, cells - 1)
    point_scores = similarity[:, cell[:, 1], cell[:, 0]]  # [B, N]
    order = torch.argsort(point_scores, dim=1, descending=True, stable=True)[:, : min(count, grid.shape[0])]
    chosen = order.sort(dim=1).values
    return grid.to(similarity.device)[chosen]
