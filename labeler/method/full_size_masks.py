"""The ranked proposals' masks at the image's size (docs/method.md 3.5 and 3.7): made once from the low-res
logits, measured (presence, boxes, areas), intersected class by class for soft merging, and turned into
COCO RLE for the masks that are output.

Two exact ways, chosen per image by :func:`choose_overlap_path`:

* ``dense`` (GPUs): every mask, thresholded, goes into one ``int8`` buffer on the logits' device, one row per
  mask, rows grouped by class; the intersections of a class's masks are one int8 matrix product
  (``torch._int_mm``, exact int32 counts; a float16 or bfloat16 product is not exact above 2048 / 256
  pixels), and the areas are its diagonal. Only the masks that are output become RLE, so no host work grows
  with the number of proposals. The buffer is ``masks x pixels`` bytes (800 masks of 12 megapixels: 9.6 GB),
  hence :data:`DENSE_MAX_BYTES`.
* ``rle`` (the CPU, and images too large for the buffer): every mask becomes COCO RLE on the way (run
  boundaries found on the device, strings packed on the host), and pycocotools intersects the RLEs of
  same-class pairs whose boxes meet. Its cost follows the masks' outlines, not their pixels: on the CPU,
  where upsampling dominates, it is the faster way.

Both give the same intersection counts and overlap matrix bit for bit and the same boxes, areas and strings
(``tests/test_full_size_masks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from pycocotools import mask as mask_utils

from labeler.io.coco import coco_rle
from labeler.io.rle import pack_counts, pack_masks, placed_run_lengths, run_areas
from labeler.method.proposals import upsample_logits
from labeler.method.scoring import boxes_from_masks

#: Pixels of masks upsampled at once, per device type. It bounds the memory
#: of the float32 upsampling (2**26 pixels is 256 MB on a GPU, where fewer,
#: larger chunks mean fewer kernel launches); on the CPU, chunks of 32 MB are
#: reused from the heap instead of being mapped, faulted in and unmapped each
#: time (measured 541 against 736 ms for 100 masks of 1152x864,
#: docs/PERFORMANCE.md).
UPSAMPLE_PIXELS_PER_CHUNK = {"cuda": 1 << 26, "cpu": 1 << 23}
#: The largest int8 mask buffer the dense path holds (masks x pixels bytes); larger images take the rle path.
DENSE_MAX_BYTES = 1 << 32
#: ``overlaps`` values of :func:`full_size_masks`.
OVERLAP_PATHS = ("auto", "dense", "rle")
#: ``torch._int_mm`` on CUDA takes more than 16 rows and multiples of 8: each class's block is read with at
#: least this many rows (the rows past it belong to the next class or to zero padding, and are ignored).
_MIN_PRODUCT_ROWS = 24


def _round_up(value: int, multiple: int = 8) -> int:
    return -(-value // multiple) * multiple


def dense_buffer_bytes(masks: int, image_hw: tuple[int, int]) -> int:
    """Bytes of the dense path's int8 buffer for ``masks`` masks of ``image_hw``."""
    return (masks + _MIN_PRODUCT_ROWS) * _round_up(image_hw[0] * image_hw[1])


def choose_overlap_path(device: torch.device, masks: int, image_hw: tuple[int, int], *,
                        dense_on_cpu: bool = False) -> str:
    """``dense`` on a GPU (or anywhere, with ``dense_on_cpu``) while its buffer fits :data:`DENSE_MAX_BYTES`,
    else ``rle``."""
    if (device.type == "cuda" or dense_on_cpu) and dense_buffer_bytes(masks, image_hw) <= DENSE_MAX_BYTES:
        return "dense"
    return "rle"


@dataclass
class FullSizeMasks:
    """K ranked masks at the image's size, measured.

    Attributes:
        present: ``[K]`` bool, the mask kept a pixel at the image's size (an
            empty one is dropped: it overlaps nothing, and the reference would
            give it a NaN score).
        areas: ``[K']`` int64 pixel counts of the present masks.
        intersections: ``[K', K']`` int64 ``|m_i & m_j|`` of same-class pairs,
            0 elsewhere and on the diagonal.
    """

    present: torch.Tensor
    areas: torch.Tensor
    intersections: torch.Tensor

    @property
    def overlap(self) -> torch.Tensor:
        """``[K', K']`` float64, row i: ``|m_i & m_j| / |m_i|`` for same-class pairs, 0 elsewhere and on
        the diagonal (the same float64 division pycocotools makes)."""
        return self.intersections.double() / self.areas.double().clamp_min(1.0)[:, None]

    def outputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, pa.StringArray]:
        """``[len(rows), 4]`` xyxy boxes (exclusive far edges) and compressed COCO RLE strings of the
        present masks at ``rows`` (positions among the present ones)."""
        raise NotImplementedError


@dataclass
class RleMasks(FullSizeMasks):
    """The ``rle`` path's masks: every present mask's box and string are already made."""

    boxes: torch.Tensor  # [K', 4]
    strings: pa.StringArray

    def outputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, pa.StringArray]:
        return self.boxes[rows], self.strings.take(pa.array(rows.cpu().numpy()))


@dataclass
class DenseMasks(FullSizeMasks):
    """The ``dense`` path's masks: the int8 buffer; boxes and strings are made for the output masks only."""

    buffer: torch.Tensor  # [rows, pixels rounded up to 8] int8, one row per mask in class order
    row_of: torch.Tensor  # [K'] the buffer row of each present mask
    image_hw: tuple[int, int]

    def outputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, pa.StringArray]:
        height, width = self.image_hw
        masks = self.buffer.index_select(0, self.row_of[rows])[:, : height * width].reshape(-1, height, width).bool()
        return boxes_from_masks(masks), pack_masks(masks).strings()


def rle_overlap_fractions(rles: list[dict], labels: np.ndarray) -> np.ndarray:
    """``[K, K]`` float64 ``|m_i & m_j| / |m_i|`` of same-class masks given as COCO RLEs (``{"size", "counts"}``),
    0 elsewhere and on the diagonal, with pycocotools, class by class: its ``iou`` against masks marked crowd
    is exactly the intersection over the first mask's area, computed only for pairs whose boxes meet."""
    labels = np.asarray(labels)
    fractions = np.zeros((len(rles), len(rles)), dtype=np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            continue
        group = [rles[i] for i in members]
        fractions[np.ix_(members, members)] = mask_utils.iou(group, group, [1] * members.size)
    np.fill_diagonal(fractions, 0.0)
    return fractions


def _chunk_step(device: torch.device, image_hw: tuple[int, int], chunk_pixels: int | None) -> int:
    """Masks of ``image_hw`` upsampled at once: ``chunk_pixels`` (default :data:`UPSAMPLE_PIXELS_PER_CHUNK`)
    worth, at least one."""
    pixels = chunk_pixels or UPSAMPLE_PIXELS_PER_CHUNK.get(device.type, UPSAMPLE_PIXELS_PER_CHUNK["cpu"])
    return max(1, pixels // (image_hw[0] * image_hw[1]))


def upsampled_runs(
    logits: torch.Tensor, mask_hw: tuple[int, int], corner: tuple[int, int] = (0, 0),
    image_hw: tuple[int, int] | None = None, chunk_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[K, h, w]`` low-res logits upsampled to ``mask_hw`` in chunks and thresholded, placed with their top-left
    ``corner`` (y, x) in an image of ``image_hw`` (default: ``mask_hw``, the image itself): ``present`` (``[K]``,
    the mask kept a pixel), the present masks' ``[K', 4]`` xyxy boxes in the image (exclusive far edges) and
    their COCO run lengths there (:func:`labeler.io.rle.placed_run_lengths`: ``counts``, runs per mask)."""
    top, left = corner
    device = logits.device
    offset = torch.tensor([left, top, left, top], dtype=torch.float32, device=device)
    step = _chunk_step(device, mask_hw, chunk_pixels)
    present, boxes, counts, runs = [], [], [], []
    for start in range(0, logits.shape[0], step):
        masks = upsample_logits(logits[start : start + step, None], mask_hw)[:, 0] > 0
        nonempty = masks.flatten(1).any(dim=1)
        masks = masks[nonempty]
        present.append(nonempty)
        boxes.append(boxes_from_masks(masks) + offset)
        chunk_counts, chunk_runs = placed_run_lengths(masks, top, left, image_hw or mask_hw)
        counts.append(chunk_counts)
        runs.append(chunk_runs)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return (torch.cat(present) if present else torch.zeros(0, dtype=torch.bool, device=device),
            torch.cat(boxes) if boxes else torch.zeros(0, 4, device=device),
            torch.cat([empty, *counts]), torch.cat([empty, *runs]))


def rle_full_size_masks(
    logits: torch.Tensor, labels: torch.Tensor, image_hw: tuple[int, int], chunk_pixels: int | None = None
) -> RleMasks:
    """The ``rle`` path: masks upsampled in chunks, RLE-encoded, intersected by pycocotools.

    Args:
        logits: ``[K, h, w]`` low-res logits of the ranked proposals.
        labels: ``[K]`` their classes.
        image_hw: the image's size.
        chunk_pixels: pixels upsampled at once (default :data:`UPSAMPLE_PIXELS_PER_CHUNK`).
    """
    height, width = image_hw
    device = logits.device
    present, boxes, counts, runs = upsampled_runs(logits, image_hw, chunk_pixels=chunk_pixels)
    strings = pack_counts(counts, runs, height, width).strings()
    rles = [coco_rle(text, height, width) for text in strings.to_pylist()]
    areas = run_areas(counts, runs)
    overlap = torch.from_numpy(rle_overlap_fractions(rles, labels[present].cpu().numpy())).to(device)
    return RleMasks(
        present=present,
        areas=areas,
        # pycocotools gives i / |m_i| in float64: the count back, exactly (far below 2**52)
        intersections=torch.round(overlap * areas.double()[:, None]).long(),
        boxes=boxes,
        strings=strings,
    )


def dense_full_size_masks(
    logits: torch.Tensor, labels: torch.Tensor, image_hw: tuple[int, int], chunk_pixels: int | None = None
) -> DenseMasks:
    """The ``dense`` path: masks upsampled in chunks into an int8 buffer grouped by class, intersected by one
    int8 matrix product per class; arguments as :func:`rle_full_size_masks`."""
    count, device = logits.shape[0], logits.device
    pixels = image_hw[0] * image_hw[1]
    order = torch.argsort(labels, stable=True)  # buffer row -> rank position
    buffer = torch.empty(count + _MIN_PRODUCT_ROWS, _round_up(pixels), dtype=torch.int8, device=device)
    buffer[count:].zero_()
    buffer[:count, pixels:].zero_()
    present = torch.empty(count, dtype=torch.bool, device=device)
    step = _chunk_step(device, image_hw, chunk_pixels)
    for start in range(0, count, step):
        rows = order[start : start + step]
        flat = (upsample_logits(logits[rows, None], image_hw)[:, 0] > 0).flatten(1)
        buffer[start : start + rows.shape[0], :pixels].copy_(flat)
        present[rows] = flat.any(dim=1)
    counts = torch.zeros(count, count, dtype=torch.int64, device=device)
    areas = torch.zeros(count, dtype=torch.int64, device=device)
    _, class_sizes = torch.unique_consecutive(labels[order], return_counts=True)
    start = 0
    for size in class_sizes.tolist():
        block = buffer[start : start + max(_MIN_PRODUCT_ROWS, _round_up(size))]
        intersections = torch._int_mm(block, block.t())[:size, :size]
        ranks = order[start : start + size]
        areas[ranks] = intersections.diagonal().long()
        counts[ranks[:, None], ranks[None, :]] = intersections.long().fill_diagonal_(0)
        start += size
    rows_of_rank = torch.empty_like(order)
    rows_of_rank[order] = torch.arange(count, device=device)
    kept = present.nonzero()[:, 0]
    return DenseMasks(
        present=present,
        areas=areas[kept],
        intersections=counts[kept][:, kept],
        buffer=buffer,
        row_of=rows_of_rank[kept],
        image_hw=image_hw,
    )


def full_size_masks(
    logits: torch.Tensor, labels: torch.Tensor, image_hw: tuple[int, int], overlaps: str = "auto",
    chunk_pixels: int | None = None,
) -> FullSizeMasks:
    """The ranked masks at the image's size by the ``overlaps`` path (``auto``: :func:`choose_overlap_path`)."""
    if overlaps not in OVERLAP_PATHS:
        raise ValueError(f"overlaps must be one of {', '.join(OVERLAP_PATHS)}, got {overlaps!r}")
    if overlaps == "auto":
        overlaps = choose_overlap_path(logits.device, int(logits.shape[0]), image_hw)
    build = dense_full_size_masks if overlaps == "dense" else rle_full_size_masks
    return build(logits, labels, image_hw, chunk_pixels)
