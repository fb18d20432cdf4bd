"""Sorting more strings than should sit in memory: sorted runs on local disk, merged lazily.

Strings are added in any order; every ``run_rows`` of them are sorted and
written to a Parquet run in a temporary folder; :meth:`ExternalSort.merged`
streams them back in order, each distinct string once (``heapq.merge`` of
the runs, a batch of each in memory at a time).

The folder (``labeler-sort-*`` in the system's temporary folder) holds a
lock file its process keeps locked (``flock``) while it sorts; a process
killed mid-listing cannot remove it, so every new sort first removes the
folders whose lock nobody holds any more.
"""

from __future__ import annotations

import fcntl
import glob
import heapq
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Strings held before a run is written: about 25 MB of URIs.
DEFAULT_RUN_ROWS = 262_144
READ_BATCH_ROWS = 8192
FOLDER_PREFIX = "labeler-sort-"
LOCK_NAME = "lock"
#: A sort folder without a lock file this old (seconds) was left by an older labeler.
UNLOCKED_FOLDER_AGE = 3600.0


def remove_abandoned_folders(parent: str | None = None) -> int:
    """Delete sort folders under ``parent`` (the temporary folder) whose lock no process holds; returns how many."""
    removed = 0
    for folder in glob.glob(os.path.join(parent or tempfile.gettempdir(), FOLDER_PREFIX + "*")):
        try:
            descriptor = os.open(os.path.join(folder, LOCK_NAME), os.O_RDONLY)
        except FileNotFoundError:  # just being made, or left by a labeler that locked no folder
            try:
                abandoned = time.time() - os.stat(folder).st_mtime > UNLOCKED_FOLDER_AGE
            except OSError:
                continue
        except OSError:
            continue
        else:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                abandoned = True
            except OSError:  # held: a live sort
                abandoned = False
            finally:
                os.close(descriptor)
        if abandoned:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class ExternalSort:
    """Sorted, deduplicated strings from an unbounded stream, in bounded memory.

    Use as a context manager: the runs' folder is removed on exit.
    """

    def __init__(self, run_rows: int = DEFAULT_RUN_ROWS):
        self.run_rows = run_rows
        self.added = 0
        self.repeats = 0  # strings added more than once (known after merged())
        self._buffer: list[str] = []
        self._runs: list[str] = []
        remove_abandoned_folders()
        self._folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)
        self._lock = open(os.path.join(self._folder, LOCK_NAME), "w")  # noqa: SIM115 - held until cleanup
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __enter__(self) -> ExternalSort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)
        self._lock.close()

    def add(self, values: Iterable[str]) -> None:
        before = len(self._buffer)
        self._buffer.extend(values)
        self.added += len(self._buffer) - before
        if len(self._buffer) >= self.run_rows:
            self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        column = pc.unique(pa.array(self._buffer, pa.string()))
        table = pa.table({"value": column}).sort_by("value")
        path = os.path.join(self._folder, f"run-{len(self._runs):06d}.parquet")
        pq.write_table(table, path, compression="zstd")
        self._runs.append(path)
        self._buffer = []

    def merged(self) -> Iterator[str]:
        """Every distinct string added, in sorted (code point) order; :attr:`repeats`
        is set once the stream is exhausted."""
        self._spill()
        previous, distinct = None, 0
        for value in heapq.merge(*(_read_run(path) for path in self._runs)):
            if value != previous:
                previous, distinct = value, distinct + 1
                yield value
        self.repeats = self.added - distinct

def _read_run(path: str) -> Iterator[str]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=["value"]):
        yield from batch.column(0).to_pylist()
