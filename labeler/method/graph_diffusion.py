"""Graph-diffusion rescoring (``--merge graph-diffusion``), from FSOD-VFM (ICLR 2026; their ``metric.py``,
``graph_diffusion_ios``), in place of soft merging (docs/method.md, "Options"; docs/fidelity.md says where and
why this differs from their code).

Per class, over the masks at the image's size in rank order: the intersection-over-self matrix
``ios_ij = |m_i & m_j| / |m_i|`` with the diagonal and the upper triangle zeroed (each mask against the
higher-ranked ones), its row maxima as the personal vector ``v``, and a random walk
``pi <- alpha * P @ pi + (1 - alpha) * v`` from the uniform ``pi = 1 / n`` for at most ``steps`` steps, stopping
once ``pi`` moves by less than ``tol`` (L2). ``P`` is the ``ios`` matrix itself: FSOD-VFM's row
"normalisation" divides each row by a boolean. A score becomes ``score * max(0, 1 - pi) ** lamb``. Everything
is float32 as there; the counts come from the full-size masks' integer intersections
(:mod:`labeler.method.full_size_masks`), so they are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labeler.method import defaults


@dataclass(frozen=True)
class Diffusion:
    """The random walk's settings (FSOD-VFM's ``diffusion_steps``, ``alp``, ``lamb``, and ``tol``)."""

    steps: int = defaults.DIFFUSION_STEPS
    alpha: float = defaults.DIFFUSION_ALPHA
    lamb: float = defaults.DIFFUSION_LAMBDA
    tol: float = 1e-6


def diffused_ios(intersections: torch.Tensor, areas: torch.Tensor, labels: torch.Tensor,
                 diffusion: Diffusion) -> torch.Tensor:
    """``[K]`` float32 ``pi`` of each mask, its class's random walk over intersection-over-self.

    Args:
        intersections: ``[K, K]`` integer pixel counts ``|m_i & m_j|`` (those of other classes are not read).
        areas: ``[K]`` integer pixel counts ``|m_i|``.
        labels: ``[K]`` classes.
        diffusion: the walk's settings.

    Masks are in rank order (best first). A class with one mask gets 0 (its matrix is zero).
    """
    count = labels.shape[0]
    result = torch.zeros(count, dtype=torch.float32, device=labels.device)
    if count <= 1:
        return result
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero()[:, 0]
        size = members.shape[0]
        inter = intersections[members][:, members].to(torch.float32)
        inter.fill_diagonal_(0.0)
        inter = torch.tril(inter)
        ios = inter / areas[members].to(torch.float32).clamp(min=1e-6)[:, None]
        personal = ios.max(dim=-1).values
        walk = torch.where((ios.sum(dim=1) > 1e-10)[:, None], ios, torch.zeros_like(ios))
        pi = torch.ones(size, dtype=torch.float32, device=labels.device) / size
        for _ in range(diffusion.steps):
            previous = pi
            pi = diffusion.alpha * (walk @ pi) + (1 - diffusion.alpha) * personal
            if torch.norm(pi - previous) < diffusion.tol:
                break
        result[members] = pi
    return result


def diffused_scores(scores: torch.Tensor, pi: torch.Tensor, lamb: float) -> torch.Tensor:
    """``score * max(0, 1 - pi) ** lamb``: FSOD-VFM's decay (``pi`` can pass 1: ``P`` is not normalised)."""
    return scores * torch.pow((1.0 - pi).clamp(min=0.0), lamb)
