"""Why images failed, counted by kind, with one example each.

A reason's kind is the reason with what belongs to one image taken out (its
URI, quoted names, numbers), so that 10,000 missing files are one kind:
``read failed: [Errno N] No such file or directory: …``. Each shard's footer
holds the tally of its error rows, and a run adds the footers up, so the
summary at the end of a run costs no scan of the rows, and a tally never
holds more than :data:`MAX_KINDS` kinds whatever the number of images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from labeler.io.labels import STATUS_ERROR

#: Schema metadata key of a shard's tally (JSON, :meth:`ErrorTally.to_json`).
ERRORS_KEY = b"labeler.errors"
#: Kinds a tally keeps, :data:`OTHER_KINDS` included, under which errors of further kinds are counted.
MAX_KINDS = 64
OTHER_KINDS = "(other reasons)"

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+(\.\d+)?")


def error_kind(reason: str, uri: str) -> str:
    """``reason`` without what is particular to the image at ``uri``."""
    kind = reason.replace(uri, "…")
    local = uri.removeprefix("file://")
    if local != uri:
        kind = kind.replace(local, "…")
    return _NUMBER.sub("N", _QUOTED.sub("…", kind))


@dataclass
class ErrorKind:
    """How many errors of one kind, and one of them: its image and its full reason."""

    count: int
    example_uri: str
    example_reason: str


@dataclass
class ErrorTally:
    """Error rows counted by :func:`error_kind`."""

    kinds: dict[str, ErrorKind] = field(default_factory=dict)

    def record(self, kind: str, count: int, example_uri: str, example_reason: str) -> None:
        """Add ``count`` errors of ``kind`` (negative to take them out)."""
        if kind not in self.kinds and kind != OTHER_KINDS and len(self.kinds) >= MAX_KINDS - 1:
            kind = OTHER_KINDS  # the last place is kept for it
        entry = self.kinds.get(kind)
        if entry is None:
            self.kinds[kind] = ErrorKind(count, example_uri, example_reason)
        else:
            entry.count += count
            if entry.count <= 0:
                del self.kinds[kind]

    def add(self, other: ErrorTally, sign: int = 1) -> None:
        for kind, entry in other.kinds.items():
            self.record(kind, sign * entry.count, entry.example_uri, entry.example_reason)

    @property
    def errors(self) -> int:
        return sum(entry.count for entry in self.kinds.values())

    def most_common(self, n: int) -> list[tuple[str, ErrorKind]]:
        """The ``n`` kinds with the most errors, most first (ties by kind)."""
        return sorted(self.kinds.items(), key=lambda item: (-item[1].count, item[0]))[:n]

    @classmethod
    def of_table(cls, table: pa.Table) -> ErrorTally:
        """The tally of a label table's error rows."""
        tally = cls()
        errors = table.filter(pc.equal(table.column("status"), STATUS_ERROR)).select(["uri", "error"])
        for uri, reason in zip(errors.column("uri").to_pylist(), errors.column("error").to_pylist()):
            reason = reason or "unknown"
            tally.record(error_kind(reason, uri), 1, uri, reason)
        return tally

    def to_json(self) -> dict:
        return {kind: [e.count, e.example_uri, e.example_reason] for kind, e in self.kinds.items()}

    @classmethod
    def from_json(cls, data: dict) -> ErrorTally:
        tally = cls()
        for kind, (count, uri, reason) in data.items():
            tally.record(kind, int(count), str(uri), str(reason))
        return tally
