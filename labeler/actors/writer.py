"""Writer stage: a Ray Data datasink that publishes label shards atomically."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.kept_proposals import split_kept, with_footer
from labeler.io.labels import LABELS_SCHEMA, with_file_names
from labeler.outdir.shards import write_shard
from labeler.run.progress import report, report_fatal

if TYPE_CHECKING:
    from ray.actor import ActorHandle


class LabelShardSink(Datasink[list[str]]):
    """Writes each write task's rows as one Parquet shard under ``OUT/labels`` and
    its COCO twin under ``OUT/coco`` (:mod:`labeler.outdir.shards`), each image's
    ``file_name`` relative to ``source_root``; with ``kept_footer``, the rows'
    kept proposals under ``OUT/proposals``.

    Ray Data gathers at least ``rows_per_shard`` rows per write call (more when
    its blocks hold more, as blocks of error rows do), and the call cuts them
    into shards of ``rows_per_shard`` to ``2 * rows_per_shard - 1`` rows
    (fewer only for the last rows of a pass); each shard is published whole.
    """

    def __init__(self, out: str, rows_per_shard: int, categories: list[Category], source_root: str,
                 storage_options: dict | None = None, tracker: ActorHandle | None = None,
                 kept_footer: dict | None = None):
        self.out = out
        self.source_root = source_root
        self.rows_per_shard = rows_per_shard
        self.categories = categories
        self.storage_options = storage_options
        self.tracker = tracker
        self.kept_footer = kept_footer  # with --keep-proposals: the footer of each shard's kept proposals

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable, ctx) -> list[str]:
        storage.configure(self.storage_options)
        tables = [split_kept(BlockAccessor.for_block(block).to_arrow()) for block in blocks]
        tables = [(labels, kept) for labels, kept in tables if labels.num_rows]
        if not tables:
            return []
        table = with_file_names(pa.concat_tables([labels.cast(LABELS_SCHEMA) for labels, _ in tables]),
                                self.source_root)
        kept = None
        if self.kept_footer is not None:
            if any(part is None for _, part in tables):
                raise RuntimeError("--keep-proposals: a batch reached the writer without its kept proposals")
            kept = with_footer(pa.concat_tables([part for _, part in tables]), self.kept_footer)
        uris = []
        for part, kept_part in split_rows(table, self.rows_per_shard, kept):
            try:
                uris.append(write_shard(self.out, part, categories=self.categories, kept=kept_part))
            except OSError as error:  # a full disk or a read-only OUT: no retry or later pass can help
                report_fatal(self.tracker, "write",
                             OSError(f"writing to {self.out} failed: {error.strerror or error}"))
                raise
            except Exception as error:  # labels it cannot write: the same on every retry and every pass
                report_fatal(self.tracker, "write",
                             RuntimeError(f"writing a label shard failed: {type(error).__name__}: {error}"))
                raise
            report(self.tracker, "write", part.num_rows)
        return uris


def split_rows(table: pa.Table, rows_per_shard: int,
               kept: pa.Table | None = None) -> list[tuple[pa.Table, pa.Table | None]]:
    """``table`` (and its kept proposals, row for row) cut into near-equal parts of ``rows_per_shard`` to
    ``2 * rows_per_shard - 1`` rows (one part when it has fewer rows than that)."""
    parts = max(1, table.num_rows // rows_per_shard)
    bounds = [round(k * table.num_rows / parts) for k in range(parts + 1)]
    return [(table.slice(start, end - start), None if kept is None else kept.slice(start, end - start))
            for start, end in zip(bounds[:-1], bounds[1:])]
