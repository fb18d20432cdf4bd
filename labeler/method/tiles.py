"""Where an image is cut into tiles (``labeler run --tile``), and how many detections a tiled image keeps.

A tile is a ``[x0, y0, x1, y1)`` window of the image; every tile of an image has one size (``min(tile, side)``
along each side), neighbours share at least ``overlap`` of it, and the last tile of a row or column ends on
the image's border (it overlaps its neighbour more, as SAHI's slicing does), so no tile is padded. Each tile is
labelled as an image of its own at the SAM2 input size; :mod:`labeler.method.tiled_merge` puts the tiles'
detections back together. Pure Python: the decode tasks use it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labeler.method import defaults


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start of each tile along a side of ``length`` pixels, for tiles of ``min(tile, length)`` pixels whose
    neighbours share at least ``overlap`` of them; the last one ends at ``length``."""
    size = min(tile, length)
    stride = max(1, math.floor(size * (1.0 - overlap)))
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile_grid(image_hw: tuple[int, int], tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles of an image of ``image_hw`` as ``(x0, y0, x1, y1)``, row by row."""
    height, width = image_hw
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [(x, y, x + tile_w, y + tile_h)
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


@dataclass(frozen=True)
class Tiling:
    """``--tile``, ``--tile-overlap`` and ``--tile-max-pixels`` of a run.

    Attributes:
        size: tile side in image pixels.
        overlap: share of a tile its neighbour sees too, in ``(0, 0.5]``.
        above: an image is tiled when a side exceeds this (``size`` for ``--tile N``; twice the SAM2 input for
            ``--tile auto``, as smaller images lose little to SAM2's resize).
        max_pixels: the largest image labelled in tiles.
    """

    size: int
    overlap: float = defaults.TILE_OVERLAP
    above: int | None = None
    max_pixels: int = defaults.TILE_MAX_PIXELS

    @classmethod
    def from_option(cls, tile: str, sam2_size: int, overlap: float = defaults.TILE_OVERLAP,
                    max_pixels: int = defaults.TILE_MAX_PIXELS) -> Tiling | None:
        """``--tile off|auto|N``: None for off; ``auto`` tiles at the SAM2 input size (each tile is seen at
        full resolution) the images with a side above twice that."""
        if tile == "off":
            return None
        if tile == "auto":
            return cls(sam2_size, overlap, 2 * sam2_size, max_pixels)
        return cls(int(tile), overlap, int(tile), max_pixels)

    def tiles(self, image_hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The tiles of an image, or ``[]`` for one labelled whole (no side above :attr:`above`)."""
        if max(image_hw) <= (self.above if self.above is not None else self.size):
            return []
        return tile_grid(image_hw, self.size, self.overlap)


def tiled_max_dets(max_dets: int, image_hw: tuple[int, int], tile_hw: tuple[int, int]) -> int:
    """The detections a tiled image keeps: ``max_dets`` per tile's worth of its area (``ceil(H * W / (th * tw))``
    times ``max_dets``), so a dense scene keeps as many per pixel as an untiled image of one tile's size."""
    return max_dets * math.ceil(image_hw[0] * image_hw[1] / (tile_hw[0] * tile_hw[1]))
