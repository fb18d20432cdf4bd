"""Sets of image ids in little memory: a bitmap over dense ids, a sorted array otherwise.

The ids labeler gives folder and list sources are dense (1, 2, 3, ...), so
the set of finished or listed images of a 10-million-image run is a 1.25 MB
bitmap, not 80 MB of int64 values. COCO sources keep their own ids, which
may be anything up to 2**63: those sets are sorted int64 arrays unless the
ids happen to be dense too. Both are saved as ``.npy`` files (read back with
``allow_pickle=False``).
"""

from __future__ import annotations

import io

import numpy as np


class IdSet:
    """A set of non-negative int64 ids with vectorised membership tests and adds."""

    def __init__(self, bits: np.ndarray | None = None, values: np.ndarray | None = None):
        self._bits = bits  # packed, big-endian bit order: id i is bit 7 - i % 8 of byte i // 8
        self._values = values  # sorted unique int64
        self._pending: list[np.ndarray] = []  # added to an array set, merged when next read

    def _merged(self) -> np.ndarray:
        if self._pending:
            self._values = np.unique(np.concatenate([self._values, *self._pending]))
            self._pending = []
        return self._values

    @classmethod
    def empty(cls, id_bound: int | None = None) -> IdSet:
        """An empty set: a bitmap for ids below ``id_bound`` when given, else an array."""
        if id_bound is not None:
            return cls(bits=np.zeros((id_bound + 7) // 8, dtype=np.uint8))
        return cls(values=np.zeros(0, np.int64))

    @classmethod
    def for_ids(cls, id_bound: int, count: int) -> IdSet:
        """An empty set for ``count`` ids below ``id_bound``: a bitmap when it is no larger
        than the ids as int64 would be (64 bits each), else an array."""
        return cls.empty(id_bound if id_bound <= 64 * count + 65_536 else None)

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> IdSet:
        """The set of ``ids`` (:meth:`for_ids` picks the kind)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = cls.for_ids(int(ids.max()) + 1 if ids.size else 0, ids.size)
        found.add(ids)
        return found

    def add(self, ids: np.ndarray) -> None:
        """Add ``ids`` (a bitmap set takes only ids below its bound)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return
        if self._bits is None:
            self._pending.append(ids)
            return
        if ids.min() < 0 or ids.max() >= self._bits.size * 8:
            raise ValueError(f"ids outside [0, {self._bits.size * 8}) added to a bitmap id set")
        np.bitwise_or.at(self._bits, ids >> 3, (1 << (7 - (ids & 7))).astype(np.uint8))

    def __len__(self) -> int:
        if self._bits is not None:
            return int(np.bitwise_count(self._bits).sum(dtype=np.int64))
        return int(self._merged().size)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``ids`` are in the set."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._bits is not None:
            inside = (ids >= 0) & (ids < self._bits.size * 8)
            found = np.zeros(ids.shape, dtype=bool)
            kept = ids[inside]
            found[inside] = (self._bits[kept >> 3] >> (7 - (kept & 7))) & 1 == 1
            return found
        values = self._merged()
        if not values.size:
            return np.zeros(ids.shape, dtype=bool)
        positions = np.minimum(np.searchsorted(values, ids), values.size - 1)
        return values[positions] == ids

    @property
    def nbytes(self) -> int:
        """Memory the set takes."""
        return int((self._bits if self._bits is not None else self._merged()).nbytes)

    def to_bytes(self) -> bytes:
        """The set as a ``.npy`` file: ``uint8`` bits, or ``int64`` sorted values."""
        buffer = io.BytesIO()
        np.save(buffer, self._bits if self._bits is not None else self._merged(), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IdSet:
        """Read back :meth:`to_bytes`."""
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(bits=array) if array.dtype == np.uint8 else cls(values=array.astype(np.int64))
