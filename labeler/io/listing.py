"""A run's stored listing: every image of its source with its id, under ``OUT/_state``.

The source is listed once, streaming, into Parquet parts; every later
rerun reads the parts instead of listing the source again, and Ray Data
reads the work from them, a part per task. ``--relist`` lists the source
anew and merges it with the stored listing: images still there keep their
ids, added ones get new ids, and ids are never reused.

Ids. Folder and list images get sequential ids (1, 2, 3, ... in URI order
at the first listing, then the next free ones): they never collide, stay
exact in JSON readers that use doubles up to 2**53 images, and stay the same
on every rerun of this OUT. COCO sources keep the file's own ids.

Layout (``_state/``)::

    listing.json                          pointer: version, kind, counts, next_id
    listing/<version>/part-000000.parquet image_id int64, uri string; sorted by
                                          uri (folders, lists) or id (COCO)
    listing/<version>/ids.npy             the listed ids (:class:`IdSet`)

A new listing is written to a new version folder and published by replacing
``listing.json``; a kill before that leaves the previous listing in force.
"""

from __future__ import annotations

import io
import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import LabelerError
from labeler.io import out_folder, storage
from labeler.io.external_sort import ExternalSort
from labeler.io.id_set import IdSet
from labeler.io.sources import SourceEntries

log = logging.getLogger(__name__)

FORMAT = "labeler-listing/1"
IDS_NAME = "ids.npy"
#: Rows per listing part: about PART_COUNT_TARGET parts, within these bounds.
PART_ROWS_MIN, PART_ROWS_MAX, PART_COUNT_TARGET = 16, 4096, 256
LISTING_SCHEMA = pa.schema([pa.field("image_id", pa.int64(), nullable=False),
                            pa.field("uri", pa.string(), nullable=False)])


def part_rows_for(images: int) -> int:
    """Rows per part for a listing of ``images``: enough parts to keep a cluster's
    decode tasks busy, few enough that a part is worth a task."""
    return min(PART_ROWS_MAX, max(PART_ROWS_MIN, math.ceil(images / PART_COUNT_TARGET)))


@dataclass(frozen=True)
class Listing:
    """A stored listing (see the module doc)."""

    out: str
    version: str
    kind: str  # folder, list or coco
    images: int
    next_id: int  # every id is below it; the next folder or list image gets it
    parts: int
    repeats: int = 0  # lines of a list naming an image already listed

    @property
    def folder(self) -> str:
        return out_folder.join(self.out, out_folder.STATE_DIR, out_folder.LISTING_DIR, self.version)

    def part_uris(self) -> list[str]:
        return [f"{self.folder}/part-{index:06d}.parquet" for index in range(self.parts)]

    def ids(self) -> IdSet:
        """The listed ids."""
        return IdSet.from_bytes(storage.read_bytes(f"{self.folder}/{IDS_NAME}"))

    def empty_id_set(self) -> IdSet:
        """An empty set for ids of this listing: a bitmap unless the ids are sparse
        (a COCO file's own ids may be anything)."""
        return IdSet.for_ids(self.next_id, self.images)

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The parts in order, one in memory at a time."""
        for uri in self.part_uris():
            yield read_part(uri, columns)


def read_part(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One listing part."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _pointer(out: str) -> str:
    return out_folder.join(out, out_folder.STATE_DIR, out_folder.LISTING_NAME)


def load_listing(out: str) -> Listing | None:
    """The listing stored in OUT, or None."""
    uri = _pointer(out)
    if not storage.exists(uri):
        return None
    try:
        document = json.loads(storage.read_bytes(uri))
        if document.pop("format") != FORMAT:
            raise ValueError("unknown format")
        return Listing(out=out, **document)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise LabelerError(f"{uri}: corrupt; rerun with --relist to list the source again") from None


class _PartWriter:
    """Writes ``(image_id, uri)`` rows as numbered parts and gathers their ids."""

    def __init__(self, folder: str, part_rows: int, ids: IdSet):
        self.folder, self.part_rows, self.ids = folder, part_rows, ids
        self.parts = self.rows = 0
        self._ids: list[int] = []
        self._uris: list[str] = []

    def add(self, image_id: int, uri: str) -> None:
        self._ids.append(image_id)
        self._uris.append(uri)
        if len(self._ids) >= self.part_rows:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        for start in range(0, table.num_rows, self.part_rows):
            self._write(table.slice(start, self.part_rows))

    def flush(self) -> None:
        if self._ids:
            self._write(pa.table({"image_id": pa.array(self._ids, pa.int64()), "uri": pa.array(self._uris)}))
            self._ids, self._uris = [], []

    def _write(self, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table.cast(LISTING_SCHEMA), buffer, compression="zstd")
        storage.write_bytes_atomic(f"{self.folder}/part-{self.parts:06d}.parquet", buffer.getvalue())
        self.ids.add(table.column("image_id").to_numpy())
        self.parts += 1
        self.rows += table.num_rows


def _stored_pairs(listing: Listing | None) -> Iterator[tuple[str, int]]:
    if listing is None:
        return
    for table in listing.iter_tables():
        yield from zip(table.column("uri").to_pylist(), table.column("image_id").to_pylist())


def store_listing(out: str, entries: SourceEntries, previous: Listing | None = None) -> Listing:
    """List a source into OUT and make it the run's listing.

    With a ``previous`` listing of the same source, images it holds keep
    their ids, new ones get ids from its ``next_id`` on, and images gone
    from the source leave the listing (their labels are set aside at the end
    of the run). Memory stays bounded by a sort run and a part, whatever the
    number of images.
    """
    version = uuid.uuid4().hex
    folder = out_folder.join(out, out_folder.STATE_DIR, out_folder.LISTING_DIR, version)
    if entries.kind == "coco":
        table = entries.coco_images
        ids = table.column("image_id").to_numpy()
        writer = _PartWriter(folder, part_rows_for(table.num_rows), IdSet.from_ids(ids))
        writer.add_table(table)
        next_id, repeats, added, removed = (int(ids.max()) + 1 if ids.size else 1), 0, table.num_rows, 0
    else:
        next_id = previous.next_id if previous is not None and previous.kind == entries.kind else 1
        with ExternalSort() as sorter:
            for batch in entries.uri_batches:
                sorter.add(batch)
            # Bits for every id this listing may hand out: the old ones and one per URI added.
            writer = _PartWriter(folder, part_rows_for(sorter.added), IdSet.empty(next_id + sorter.added))
            old = _stored_pairs(previous if previous is not None and previous.kind == entries.kind else None)
            old_uri, old_id = next(old, (None, 0))
            added = removed = 0
            for uri in sorter.merged():
                while old_uri is not None and old_uri < uri:
                    removed += 1
                    old_uri, old_id = next(old, (None, 0))
                if old_uri == uri:
                    writer.add(old_id, uri)
                    old_uri, old_id = next(old, (None, 0))
                else:
                    writer.add(next_id, uri)
                    next_id, added = next_id + 1, added + 1
            removed += (old_uri is not None) + sum(1 for _ in old)
            repeats = sorter.repeats
        writer.flush()
    storage.write_bytes_atomic(f"{folder}/{IDS_NAME}", writer.ids.to_bytes())
    listing = Listing(out=out, version=version, kind=entries.kind, images=writer.rows, next_id=next_id,
                      parts=writer.parts, repeats=repeats)
    document = {"format": FORMAT, **{k: v for k, v in asdict(listing).items() if k != "out"}}
    storage.write_bytes_atomic(_pointer(out), json.dumps(document, indent=2).encode())
    remove_other_versions(out, listing)
    if repeats:
        log.warning("%d lines of the list name an image listed already; each image is labelled once", repeats)
    if previous is not None:
        log.info("relisted: %d images, %d new, %d gone from the source", listing.images, added, removed)
    return listing


def remove_other_versions(out: str, keep: Listing | None) -> None:
    """Delete listing versions other than ``keep`` (replaced ones, and those of killed listings)."""
    root = out_folder.join(out, out_folder.STATE_DIR, out_folder.LISTING_DIR)
    fs, path = storage.filesystem(root)
    if not fs.exists(path):
        return
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if out_folder.is_hex_id(name) and (keep is None or name != keep.version):
            fs.rm(entry, recursive=True)

