"""K-shot sampling of reference instances (docs/method.md 1.5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_SIDE = 32.0
BORDER_MARGIN = 10.0


@dataclass(frozen=True)
class Candidate:
    """What sampling needs to know of one annotation."""

    annotation_id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    image_hw: tuple[int, int]
    iscrowd: bool = False


class NotEnoughShotsError(ValueError):
    """A class has fewer usable candidates than shots asked for."""

    def __init__(self, category_id: int, available: int, wanted: int):
        super().__init__(f"category {category_id}: {available} usable candidates, {wanted} shots asked for")
        self.category_id = category_id
        self.available = available
        self.wanted = wanted


def is_eligible(candidate: Candidate, min_side: float = MIN_SIDE, border: float = BORDER_MARGIN) -> bool:
    """Not crowd, both box sides at least ``min_side`` px, and at least
    ``border`` px away from every image border."""
    if candidate.iscrowd:
        return False
    x, y, w, h = candidate.bbox
    height, width = candidate.image_hw
    if w < min_side or h < min_side:
        return False
    return x >= border and y >= border and x + w <= width - border and y + h <= height - border


def sample_shots(
    candidates: Iterable[Candidate],
    category_ids: Sequence[int],
    shots: int,
    seed: int,
) -> dict[int, list[int]]:
    """Draw ``shots`` annotation ids per category.

    Per category, the eligible candidates (sorted by annotation id, so the
    input order does not matter) are shuffled by a generator seeded with
    ``(seed, category_id)``, which keeps each class's draw independent of
    the others; they are taken in that order, skipping any whose image was
    already used for the class.

    Returns:
        category id -> chosen annotation ids, in draw order.

    Raises:
        NotEnoughShotsError: a category has too few candidates.
    """
    by_category: dict[int, list[Candidate]] = {category_id: [] for category_id in category_ids}
    for candidate in candidates:
        if candidate.category_id in by_category and is_eligible(candidate):
            by_category[candidate.category_id].append(candidate)
    chosen: dict[int, list[int]] = {}
    for category_id in category_ids:
        pool = sorted(by_category[category_id], key=lambda c: c.annotation_id)
        order = np.random.default_rng([seed, category_id]).permutation(len(pool))
        picked: list[int] = []
        used_images: set[int] = set()
        for position in order:
            candidate = pool[int(position)]
            if candidate.image_id in used_images:
                continue
            picked.append(candidate.annotation_id)
            used_images.add(candidate.image_id)
            if len(picked) == shots:
                break
        if len(picked) < shots:
            raise NotEnoughShotsError(category_id, len(picked), shots)
        chosen[category_id] = picked
    return chosen
