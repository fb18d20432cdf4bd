"""COCO run-length encoding of mask batches, with no per-mask loop on the host.

Encoding: run boundaries are found with tensor ops on the masks' own device
(the GPU in production), so only boundary positions travel to the host;
there the run lengths of all masks are turned into COCO's compressed
strings at once with numpy (:func:`pack_counts`, the character code of
pycocotools' ``rleToString``). Decoding reverses both steps: the strings of
all masks are parsed at once on the host, and the pixels are expanded on
the device with ``repeat_interleave``.

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


def run_lengths(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """COCO (column-major, starting with a run of zeros) run lengths of ``[K, H, W]`` masks.

    Computed on the masks' device; only the run lengths reach the host.

    Returns:
        ``counts`` (int64, every mask's run lengths back to back) and
        ``per_mask`` (int64 ``[K]``, how many runs each mask has).
    """
    count, height, width = masks.shape
    pixels = height * width
    flat = masks.bool().transpose(1, 2).reshape(count, pixels)
    # nonzero lists the changes ordered by (mask, position).
    mask_of_change, position = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    changes = torch.bincount(mask_of_change, minlength=count)
    # Each mask's run edges, back to back: 0, a second 0 when its first pixel is
    # on (COCO counts start with a run of zeros, here of length 0), its change
    # positions, then `pixels`. Run lengths are the differences within a mask.
    extra = flat[:, 0].long() + 2
    ends = torch.cumsum(changes + extra, dim=0) - 1
    edges = torch.zeros(int(ends[-1]) + 1 if count else 0, dtype=torch.int64, device=masks.device)
    edges[ends] = pixels
    change_index = torch.arange(position.numel(), device=masks.device)
    edges[change_index + (torch.cumsum(extra, dim=0) - 1)[mask_of_change]] = position + 1
    within_mask = torch.ones(max(edges.numel() - 1, 0), dtype=torch.bool, device=masks.device)
    within_mask[ends[:-1]] = False
    counts = torch.diff(edges)[within_mask]
    per_mask = changes + extra - 1
    return counts.cpu().numpy(), per_mask.cpu().numpy()


def run_areas(counts: np.ndarray, per_mask: np.ndarray) -> np.ndarray:
    """Pixels set in each mask (int64 ``[K]``): the sum of its odd-position run lengths."""
    per_mask = np.asarray(per_mask, dtype=np.int64)
    if per_mask.size == 0:
        return np.zeros(0, np.int64)
    starts = np.concatenate(([0], np.cumsum(per_mask)[:-1])).astype(np.int64)
    on = (np.arange(counts.size) - np.repeat(starts, per_mask)) % 2 == 1
    return np.bincount(np.repeat(np.arange(per_mask.size), per_mask), weights=counts * on,
                       minlength=per_mask.size).astype(np.int64)


def pack_counts(counts: np.ndarray, per_mask: np.ndarray, height: int, width: int) -> PackedRle:
    """COCO compressed strings of run lengths (as pycocotools' ``rleToString``), all masks at once."""
    per_mask = np.asarray(per_mask, dtype=np.int64)
    if per_mask.size == 0:
        return PackedRle(b"", np.zeros(0, np.int32), height, width)
    starts = np.concatenate(([0], np.cumsum(per_mask)[:-1]))
    index = np.arange(counts.size) - np.repeat(starts, per_mask)  # position within its mask
    values = counts.astype(np.int64).copy()
    delta = np.flatnonzero(index > 2)
    values[delta] -= counts[delta - 2]
    # Characters per value: the fewest 5-bit groups holding it as a signed number.
    chars = np.ones(values.size, np.int64)
    for groups in range(1, _MAX_CHARS):
        limit = 1 << (_BITS * groups - 1)
        chars += (values < -limit) | (values >= limit)
    first_char = np.concatenate(([0], np.cumsum(chars)[:-1]))
    group = np.arange(int(chars.sum())) - np.repeat(first_char, chars)
    code = (np.repeat(values, chars) >> (_BITS * group)) & 0x1F
    code |= np.where(group < np.repeat(chars, chars) - 1, _MORE, 0)
    blob = (code + _OFFSET).astype(np.uint8).tobytes()
    lengths = np.add.reduceat(chars, starts).astype(np.int32)
    return PackedRle(blob, lengths, height, width)


def unpack_counts(packed: PackedRle) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of packed strings (as pycocotools' ``rleFrString``): ``counts, per_mask``."""
    if packed.count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    code = np.frombuffer(packed.blob, dtype=np.uint8).astype(np.int64) - _OFFSET
    last = (code & _MORE) == 0  # the last character of each value
    value_of_char = np.concatenate(([0], np.cumsum(last)[:-1]))
    value_start = np.flatnonzero(np.concatenate(([True], last[:-1])))
    group = np.arange(code.size) - value_start[value_of_char]
    values = np.add.reduceat((code & 0x1F) << (_BITS * group), value_start)
    negative = (code[last] & _SIGN) != 0
    values[negative] |= -1 << (_BITS * (group[last][negative] + 1))
    # Values per mask, from the byte length of each mask's string.
    char_end = np.cumsum(packed.lengths.astype(np.int64))
    per_mask = np.diff(np.concatenate(([0], np.cumsum(last)[char_end - 1])))
    starts = np.concatenate(([0], np.cumsum(per_mask)[:-1]))
    index = np.arange(values.size) - np.repeat(starts, per_mask)
    # Undo the delta coding: counts[i] = values[i] + counts[i - 2] for i > 2, i.e. a
    # running sum along each mask's chain of odd positions and of even positions >= 2.
    # Each chain's positions, picked in order, come mask by mask: a segmented cumsum.
    mask_of_value = np.repeat(np.arange(per_mask.size), per_mask)
    counts = values.copy()
    for chain in (index % 2 == 1, (index % 2 == 0) & (index > 0)):
        positions = np.flatnonzero(chain)
        chained = values[positions]
        sums = np.cumsum(chained)
        owner = mask_of_value[positions]
        first = np.concatenate(([True], owner[1:] != owner[:-1]))
        start_of = np.maximum.accumulate(np.where(first, np.arange(sums.size), 0))
        counts[positions] = sums - (sums - chained)[start_of]
    return counts, per_mask


def expand_counts(counts: np.ndarray, per_mask: np.ndarray, height: int, width: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``[K, H, W]`` boolean masks from run lengths, expanded on ``device``."""
    count = int(per_mask.size)
    if count == 0:
        return torch.zeros(0, height, width, dtype=torch.bool, device=device)
    starts = np.concatenate(([0], np.cumsum(per_mask)[:-1]))
    on = ((np.arange(counts.size) - np.repeat(starts, per_mask)) % 2 == 1)
    lengths = torch.from_numpy(counts).to(device)
    pixels = torch.repeat_interleave(torch.from_numpy(on).to(device), lengths, output_size=count * height * width)
    return pixels.reshape(count, width, height).transpose(1, 2)


def pack_masks(masks: torch.Tensor) -> PackedRle:
    """Compressed COCO RLE of ``[K, H, W]`` boolean masks, packed (no per-mask host loop)."""
    count, height, width = masks.shape
    if count == 0:
        return PackedRle(b"", np.zeros(0, np.int32), height, width)
    return pack_counts(*run_lengths(masks), height, width)


def unpack_masks(packed: PackedRle, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[K, H, W]`` boolean masks of packed strings, expanded on ``device``."""
    return expand_counts(*unpack_counts(packed), packed.height, packed.width, device)


def decode_masks(counts: list[str] | list[bytes], height: int, width: int) -> np.ndarray:
    """Decode compressed RLE counts (one image size) to ``[K, H, W]`` uint8 masks."""
    if not counts:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [coco_rle(c if isinstance(c, bytes) else c.encode("ascii"), height, width) for c in counts]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
