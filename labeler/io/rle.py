"""COCO run-length encoding of mask batches, as tensor operations on the masks' device.

Encoding: run boundaries are found on the masks' own device (the GPU in
production), and the run lengths of all masks become COCO's compressed
strings at once (:func:`pack_counts`, the character code of pycocotools'
``rleToString``), still on the device; only the strings' bytes travel to the
host. Decoding reverses both steps: the strings of all masks are parsed at
once on the device and the pixels expanded there with ``repeat_interleave``.
The work on the host is a fixed number of operator launches and one copy,
whatever the number of masks or runs.

The packed form is one ASCII blob holding every mask's string back to back,
plus each string's byte length; it is what the proposal payload carries,
and it becomes an Arrow string column without a copy per mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from pycocotools import mask as mask_utils

from labeler.io.coco import coco_rle

#: Bits of a count per character of the compressed string, and its flags.
_BITS = 5
_MORE = 0x20
_SIGN = 0x10
_OFFSET = 48
_MAX_CHARS = 13  # enough for any int64


@dataclass
class PackedRle:
    """Compressed COCO RLE strings of K masks of one size, back to back.

    Attributes:
        blob: the K strings concatenated (ASCII).
        lengths: ``int32 [K]`` byte length of each string.
        height, width: the masks' size.
    """

    blob: bytes
    lengths: np.ndarray
    height: int
    width: int

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    def strings(self) -> pa.StringArray:
        """The K strings as an Arrow string array over the same bytes."""
        offsets = np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64))).astype(np.int32)
        return pa.StringArray.from_buffers(self.count, pa.py_buffer(offsets), pa.py_buffer(self.blob))


def run_lengths(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO (column-major, starting with a run of zeros) run lengths of ``[K, H, W]`` masks, on their device.

    Returns:
        ``counts`` (int64, every mask's run lengths back to back) and
        ``per_mask`` (int64 ``[K]``, how many runs each mask has; at least 1).
    """
    count, height, width = masks.shape
    pixels = height * width
    device = masks.device
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    flat = masks.bool().transpose(1, 2).reshape(count, pixels)
    # nonzero lists the changes ordered by (mask, position).
    mask_of_change, position = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    changes = torch.bincount(mask_of_change, minlength=count)
    # Each mask's run edges, back to back: 0, a second 0 when its first pixel is
    # on (COCO counts start with a run of zeros, here of length 0), its change
    # positions, then `pixels`. Run lengths are the differences within a mask.
    extra = flat[:, 0].long() + 2
    ends = torch.cumsum(changes + extra, dim=0) - 1
    edges = torch.zeros(int(ends[-1]) + 1, dtype=torch.int64, device=device)
    edges[ends] = pixels
    change_index = torch.arange(position.numel(), device=device)
    edges[change_index + (torch.cumsum(extra, dim=0) - 1)[mask_of_change]] = position + 1
    within_mask = torch.ones(edges.numel() - 1, dtype=torch.bool, device=device)
    within_mask[ends[:-1]] = False
    return torch.diff(edges)[within_mask], changes + extra - 1


def placed_run_lengths(masks: torch.Tensor, top: int, left: int, image_hw: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO run lengths (as :func:`run_lengths`) of ``[K, h, w]`` masks of one tile placed at ``(top, left)`` in
    an image of ``image_hw``, all zero outside the tile, without making the image-sized masks.

    Each tile column, between a zero above and below, is a stretch of the image's column-major order: a change
    at row ``y`` of column ``x`` is an edge at ``(left + x) * H + top + y`` there. Where a tile spans the whole
    height, the end of one column's run meets the start of the next one's at the same edge: both edges go, and
    the run continues, as pycocotools encodes it.
    """
    count, tile_h, tile_w = masks.shape
    height, width = image_hw
    device = masks.device
    if (tile_h, tile_w) == (height, width):  # the tile is the image
        return run_lengths(masks)
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    columns = torch.zeros(count, tile_w, tile_h + 2, dtype=torch.bool, device=device)
    columns[:, :, 1:-1] = masks.bool().transpose(1, 2)
    flat = columns.reshape(count, -1)
    mask_of, position = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    position = position + 1  # the first pixel of the new run, in padded column-major order
    edges = (left + position // (tile_h + 2)) * height + top + position % (tile_h + 2) - 1
    # Edges are sorted within a mask; a pair at one place is a run going on into the next column.
    same = (mask_of[1:] == mask_of[:-1]) & (edges[1:] == edges[:-1])
    keep = torch.ones_like(edges, dtype=torch.bool)
    keep[:-1] &= ~same
    keep[1:] &= ~same
    mask_of, edges = mask_of[keep], edges[keep]
    per_mask = torch.bincount(mask_of, minlength=count)
    # Each mask's bounds, back to back: 0, its edges, H * W; its runs are the differences within a mask.
    bounds = per_mask + 2
    ends = torch.cumsum(bounds, dim=0) - 1
    values = torch.zeros(int(ends[-1]) + 1, dtype=torch.int64, device=device)
    values[ends] = height * width
    rank = torch.arange(edges.numel(), device=device) - (torch.cumsum(per_mask, dim=0) - per_mask)[mask_of]
    values[(ends - bounds + 1)[mask_of] + 1 + rank] = edges
    runs = torch.diff(values)
    within = torch.ones(runs.numel(), dtype=torch.bool, device=device)
    within[ends[:-1]] = False
    # A mask ending on the image's last pixel has no closing run of zeros.
    closing = ends - 1
    within[closing[(runs[closing] == 0) & (per_mask > 0)]] = False
    per_mask = per_mask + 1 - ((runs[closing] == 0) & (per_mask > 0)).long()
    return runs[within], per_mask


def _position_in_mask(per_mask: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``total`` values laid out mask by mask (``per_mask`` each): each value's mask and its position in it."""
    masks = torch.arange(per_mask.numel(), device=per_mask.device)
    mask_of = torch.repeat_interleave(masks, per_mask, output_size=total)
    starts = torch.cumsum(per_mask, dim=0) - per_mask
    return mask_of, torch.arange(total, device=per_mask.device) - starts[mask_of]


def run_areas(counts: torch.Tensor, per_mask: torch.Tensor) -> torch.Tensor:
    """Pixels set in each mask (int64 ``[K]``): the sum of its odd-position run lengths."""
    mask_of, index = _position_in_mask(per_mask, counts.numel())
    areas = torch.zeros(per_mask.numel(), dtype=torch.int64, device=counts.device)
    return areas.index_add_(0, mask_of, counts * (index % 2))


def pack_counts(counts: torch.Tensor, per_mask: torch.Tensor, height: int, width: int) -> PackedRle:
    """COCO compressed strings of run lengths (as pycocotools' ``rleToString``), all masks at once,
    made on the counts' device; the bytes come to the host."""
    if per_mask.numel() == 0:
        return PackedRle(b"", np.zeros(0, np.int32), height, width)
    device = counts.device
    mask_of, index = _position_in_mask(per_mask, counts.numel())
    # counts[i] - counts[i - 2] from the fourth count of a mask on (the two earlier ones are in the same mask)
    values = torch.where(index > 2, counts - torch.roll(counts, 2), counts)
    # Characters per value: the fewest 5-bit groups holding it as a signed number.
    limits = torch.tensor([1 << (_BITS * groups - 1) for groups in range(1, _MAX_CHARS)], device=device)
    chars = 1 + ((values[:, None] < -limits) | (values[:, None] >= limits)).sum(dim=1)
    total_chars = int(chars.sum())
    value_of_char = torch.repeat_interleave(torch.arange(values.numel(), device=device), chars, output_size=total_chars)
    first_char = torch.cumsum(chars, dim=0) - chars
    group = torch.arange(total_chars, device=device) - first_char[value_of_char]
    code = (values[value_of_char] >> (_BITS * group)) & 0x1F
    code |= torch.where(group < (chars - 1)[value_of_char], _MORE, 0)
    lengths = torch.zeros(per_mask.numel(), dtype=torch.int64, device=device).index_add_(0, mask_of, chars)
    blob = (code + _OFFSET).to(torch.uint8).cpu().numpy().tobytes()
    return PackedRle(blob, lengths.to(torch.int32).cpu().numpy(), height, width)


def unpack_counts(packed: PackedRle, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Run lengths of packed strings (as pycocotools' ``rleFrString``), parsed on ``device``:
    ``counts, per_mask`` (int64)."""
    if packed.count == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    code = torch.from_numpy(np.frombuffer(packed.blob, dtype=np.uint8).copy()).to(device).long() - _OFFSET
    last = (code & _MORE) == 0  # the last character of each value
    values_total = int(last.sum())
    value_of_char = torch.cumsum(last, dim=0) - last.long()
    chars = torch.bincount(value_of_char, minlength=values_total)
    group = torch.arange(code.numel(), device=device) - (torch.cumsum(chars, dim=0) - chars)[value_of_char]
    values = torch.zeros(values_total, dtype=torch.int64, device=device).index_add_(
        0, value_of_char, (code & 0x1F) << (_BITS * group))
    sign = (code[last] & _SIGN) != 0
    values = torch.where(sign, values | (-1 << (_BITS * (group[last] + 1))), values)
    # Values per mask, from the byte length of each mask's string.
    char_end = torch.from_numpy(np.cumsum(packed.lengths.astype(np.int64))).to(device)
    values_before = torch.cumsum(last, dim=0)[char_end - 1]
    per_mask = torch.diff(values_before, prepend=values_before.new_zeros(1))
    mask_of, index = _position_in_mask(per_mask, values_total)
    # Undo the delta coding: counts[i] = values[i] + counts[i - 2] for i > 2, i.e. a
    # running sum along each mask's chain of odd positions and of even positions >= 2.
    # Each chain's positions, picked in order, come mask by mask: a segmented cumsum.
    counts = values.clone()
    for chain in (index % 2 == 1, (index % 2 == 0) & (index > 0)):
        positions = chain.nonzero()[:, 0]
        chained = values[positions]
        sums = torch.cumsum(chained, dim=0)
        owner = mask_of[positions]
        first = torch.ones_like(owner, dtype=torch.bool)
        first[1:] = owner[1:] != owner[:-1]
        start_of = torch.cummax(torch.where(first, torch.arange(sums.numel(), device=device), 0), dim=0).values
        counts[positions] = sums - (sums - chained)[start_of]
    return counts, per_mask


def expand_counts(counts: torch.Tensor, per_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[K, H, W]`` boolean masks from run lengths, expanded on their device."""
    count = int(per_mask.numel())
    if count == 0:
        return torch.zeros(0, height, width, dtype=torch.bool, device=counts.device)
    _, index = _position_in_mask(per_mask, counts.numel())
    pixels = torch.repeat_interleave(index % 2 == 1, counts, output_size=count * height * width)
    return pixels.reshape(count, width, height).transpose(1, 2)


def pack_masks(masks: torch.Tensor) -> PackedRle:
    """Compressed COCO RLE of ``[K, H, W]`` boolean masks, packed (no per-mask host loop)."""
    count, height, width = masks.shape
    if count == 0:
        return PackedRle(b"", np.zeros(0, np.int32), height, width)
    return pack_counts(*run_lengths(masks), height, width)


def unpack_masks(packed: PackedRle, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[K, H, W]`` boolean masks of packed strings, parsed and expanded on ``device``."""
    return expand_counts(*unpack_counts(packed, device), packed.height, packed.width)


def decode_masks(counts: list[str] | list[bytes], height: int, width: int) -> np.ndarray:
    """Decode compressed RLE counts (one image size) to ``[K, H, W]`` uint8 masks."""
    if not counts:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [coco_rle(c if isinstance(c, bytes) else c.encode("ascii"), height, width) for c in counts]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
