"""Writer stage: a Ray Data datasink that publishes label shards atomically."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.labels import LABELS_SCHEMA
from labeler.io.shards import write_shard
from labeler.progress import report, report_fatal

if TYPE_CHECKING:
    from ray.actor import ActorHandle


class LabelShardSink(Datasink[list[str]]):
    """Writes each write task's rows as one Parquet shard under ``OUT/labels`` and
    its COCO twin under ``OUT/coco`` (:mod:`labeler.io.shards`).

    Ray Data gathers at least ``rows_per_shard`` rows per write call, so
    shards have a useful size; each is published whole.
    """

    def __init__(self, out: str, rows_per_shard: int, categories: list[Category],
                 storage_options: dict | None = None, tracker: ActorHandle | None = None):
        self.out = out
        self.rows_per_shard = rows_per_shard
        self.categories = categories
        self.storage_options = storage_options
        self.tracker = tracker

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable, ctx) -> list[str]:
        storage.configure(self.storage_options)
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables([t.cast(LABELS_SCHEMA) for t in tables])
        try:
            uri = write_shard(self.out, table, categories=self.categories)
        except OSError as error:  # a full disk or a read-only OUT: no retry or later pass can help
            report_fatal(self.tracker, "write", OSError(f"writing to {self.out} failed: {error.strerror or error}"))
            raise
        report(self.tracker, "write", table.num_rows)
        return [uri]
