"""Prototype pooling (docs/method.md 1.3-1.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class EmptyWeightsError(ValueError):
    """Some weight maps sum to zero on the feature grid.

    Attributes:
        indices: positions in the batch whose weights sum to zero.
    """

    def __init__(self, indices: list[int]):
        super().__init__(f"weights sum to zero for batch positions {indices}")
        self.indices = indices


def instance_prototypes(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of patch features: ``sum(w * f) / sum(w)``.

    Args:
        features: ``[N, g, g, D]`` patch features.
        weights: ``[N, g, g]`` non-negative (possibly fractional) weights.

    Returns:
        ``[N, D]`` instance prototypes (not normalised).

    Raises:
        EmptyWeightsError: a weight map sums to zero; never a silent NaN.
    """
    if features.shape[:3] != weights.shape:
        raise ValueError(f"features {tuple(features.shape)} and weights {tuple(weights.shape)} disagree")
    weights = weights.to(features.dtype)
    totals = weights.sum(dim=(1, 2))
    empty = (totals <= 0).nonzero().flatten().tolist()
    if empty:
        raise EmptyWeightsError(empty)
    pooled = torch.einsum("nhw,nhwd->nd", weights, features)
    return pooled / totals[:, None]


def class_prototypes(instance: torch.Tensor, class_index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of each class's instance prototypes, L2-normalised.

    Args:
        instance: ``[N, D]`` instance prototypes.
        class_index: ``[N]`` class position (0..num_classes-1) of each instance.
        num_classes: C.

    Returns:
        ``[C, D]`` unit-norm class prototypes.

    Raises:
        ValueError: a class has no instance.
    """
    counts = torch.bincount(class_index, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"classes at positions {missing} have no instance prototype")
    sums = torch.zeros(num_classes, instance.shape[1], dtype=instance.dtype, device=instance.device)
    sums.index_add_(0, class_index, instance)
    means = sums / counts[:, None].to(instance.dtype)
    return F.normalize(means, dim=1)
