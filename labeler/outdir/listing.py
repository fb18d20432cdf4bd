"""A run's stored listing: every image of its source with its id, under ``OUT/_state`` (docs/formats.md,
"Image ids" and "Resuming").

The source is listed once, streaming, into Parquet parts that every rerun (and Ray Data, a part per
task) reads instead; ``--relist`` merges a new listing into it, ids kept and never reused::

    listing.json                          pointer: version, kind, counts, next_id
    listing/<version>/part-000000.parquet image_id int64, uri string; sorted by uri (folders, lists) or id (COCO)
    listing/<version>/ids.npy             the listed ids (:class:`IdSet`)

A new listing goes to a new version folder and is put in force by replacing ``listing.json``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.external_sort import ExternalSort
from labeler.io.sources import SourceEntries
from labeler.outdir import layout as out_folder
from labeler.outdir.id_set import IdSet
from labeler.outdir.shards import list_shards, read_shard

log = logging.getLogger(__name__)

FORMAT = "labeler-listing/1"
KINDS = ("folder", "list", "coco")
#: Listing parts whose footers are read at once when a listing is checked.
CHECK_THREADS = 16
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
        return [f"{self.folder}/{out_folder.listing_part_name(index)}" for index in range(self.parts)]

    def ids(self) -> IdSet:
        """The listed ids."""
        return IdSet.from_bytes(storage.read_bytes(f"{self.folder}/{out_folder.LISTING_IDS_NAME}"))

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


class DamagedListing(LabelerError):
    """The stored listing cannot be trusted; ``--relist`` lists the source anew, ids taken from the labels."""


def has_listing_state(out: str) -> bool:
    """True when OUT holds a listing of this labeler, whole or damaged (its pointer or its versions)."""
    return storage.exists(_pointer(out)) or storage.exists(
        out_folder.join(out, out_folder.STATE_DIR, out_folder.LISTING_DIR))


def _damaged(uri: str, what: str) -> DamagedListing:
    return DamagedListing(f"{uri}: {what}; rerun with --relist to list the source again (the labels are kept, "
                          "and their images keep their ids)")


def _checked(listing: Listing) -> Listing:
    """``listing`` once its id set and every part are readable and agree with its counts."""
    try:
        ids = listing.ids()
    except LabelerError:  # missing or refused: storage names the reason
        raise _damaged(f"{listing.folder}/{out_folder.LISTING_IDS_NAME}", "missing or unreadable") from None
    except (ValueError, OSError, EOFError) as error:
        raise _damaged(f"{listing.folder}/{out_folder.LISTING_IDS_NAME}", f"unreadable ({error})") from None
    if len(ids) != listing.images:
        raise _damaged(_pointer(listing.out), f"it counts {listing.images} images but its ids are {len(ids)}")
    total = 0
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for uri, rows in zip(listing.part_uris(), pool.map(_part_rows_or_error, listing.part_uris())):
            if isinstance(rows, Exception):
                raise _damaged(uri, f"unreadable ({storage.describe_read_error(rows)})")
            total += rows
    if total != listing.images:
        raise _damaged(_pointer(listing.out), f"it counts {listing.images} images but its parts hold {total}")
    return listing


def _part_rows_or_error(uri: str) -> int | Exception:
    try:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except Exception as error:  # noqa: BLE001 - a damaged part, reported by the caller
        return error


def load_listing(out: str) -> Listing | None:
    """The listing stored in OUT, checked (its pointer, id set and parts agree), or None.

    Raises:
        DamagedListing: a pointer, id set or part that cannot be read or does not add up,
            or none at all beside label shards.
    """
    uri = _pointer(out)
    if not storage.exists(uri):
        if has_listing_state(out) or list_shards(out):
            raise _damaged(uri, "missing")
        return None
    try:
        document = json.loads(storage.read_bytes(uri))
        if document.pop("format") != FORMAT:
            raise ValueError("unknown format")
        listing = Listing(out=out, **document)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise _damaged(uri, "corrupt") from None
    fields = (listing.images, listing.next_id, listing.parts, listing.repeats)
    if not (all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields)
            and listing.kind in KINDS and out_folder.is_hex_id(str(listing.version))
            and listing.parts <= listing.images and (listing.parts == 0) == (listing.images == 0)
            and listing.next_id >= 1):
        raise _damaged(uri, "corrupt (a field out of range)")
    return _checked(listing)


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
        storage.write_bytes_atomic(f"{self.folder}/{out_folder.listing_part_name(self.parts)}", buffer.getvalue())
        self.ids.add(table.column("image_id").to_numpy())
        self.parts += 1
        self.rows += table.num_rows


def _stored_pairs(listing: Listing) -> Iterator[tuple[str, int]]:
    for table in listing.iter_tables():
        yield from zip(table.column("uri").to_pylist(), table.column("image_id").to_pylist())


#: Between a URI and its id in the strings sorted to recover a listing from the labels (below any character).
_PAIR_SEPARATOR = "\x00"


@dataclass
class _LabelledPairs:
    """The ``(uri, image_id)`` of every row of OUT's shards and of ``_state/removed`` in URI order,
    and the largest id: what a listing of the labels' source held, when that listing is damaged."""

    out: str
    max_id: int = 0

    def __iter__(self) -> Iterator[tuple[str, int]]:
        sorter = ExternalSort()
        with sorter:
            for folder in (None, out_folder.join(self.out, out_folder.STATE_DIR, out_folder.REMOVED_NAME)):
                for uri in list_shards(self.out, folder):
                    try:
                        table = read_shard(uri, ["image_id", "uri"])
                    except (pa.ArrowInvalid, OSError) as error:  # set aside and relabelled by the run
                        log.warning("%s: unreadable (%s); its images get new ids", uri, error)
                        continue
                    ids = table.column("image_id").to_numpy()
                    if ids.size:
                        self.max_id = max(self.max_id, int(ids.max()))
                    sorter.add(f"{uri}{_PAIR_SEPARATOR}{image_id}" for uri, image_id in
                               zip(table.column("uri").to_pylist(), ids.tolist()))
            previous = None
            for value in sorter.merged():
                uri, _, image_id = value.rpartition(_PAIR_SEPARATOR)
                if uri != previous:  # one id per URI: the smallest string, so the first row met in order
                    previous = uri
                    yield uri, int(image_id)


def write_listing(out: str, entries: SourceEntries, previous: Listing | None = None, *,
                  from_labels: bool = False) -> Listing:
    """List a source into a new version folder of OUT's listing; :func:`publish_listing` makes it the run's.

    With a ``previous`` listing of the same source, images it holds keep
    their ids, new ones get ids from its ``next_id`` on, and images gone
    from the source leave the listing (their labels are set aside at the end
    of the run). With ``from_labels`` (the stored listing is damaged), the ids
    are taken from the labels themselves: every labelled image keeps its id,
    and new ones get ids above every id the labels hold. COCO sources keep
    the file's own ids either way. Memory stays bounded by a sort run and a
    part, whatever the number of images.
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
        same_source = previous is not None and previous.kind == entries.kind
        known = _LabelledPairs(out) if from_labels else (_stored_pairs(previous) if same_source else iter(()))
        with ExternalSort() as sorter:
            for batch in entries.uri_batches:
                sorter.add(batch)
            old = iter(known)
            old_uri, old_id = next(old, (None, 0))  # the labels' largest id is known once this starts
            next_id = previous.next_id if same_source and not from_labels else 1
            if from_labels:
                next_id = known.max_id + 1
            # Bits for every id this listing may hand out: the old ones and one per URI added.
            writer = _PartWriter(folder, part_rows_for(sorter.added), IdSet.empty(next_id + sorter.added))
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
    storage.write_bytes_atomic(f"{folder}/{out_folder.LISTING_IDS_NAME}", writer.ids.to_bytes())
    if previous is not None or from_labels:
        log.info("relisted: %d images, %d new, %d gone from the source", writer.rows, added, removed)
    return Listing(out=out, version=version, kind=entries.kind, images=writer.rows, next_id=next_id,
                   parts=writer.parts, repeats=repeats)


def publish_listing(listing: Listing) -> Listing:
    """Make ``listing`` (written by :func:`write_listing`) the run's listing, and delete the others."""
    document = {"format": FORMAT, **{k: v for k, v in asdict(listing).items() if k != "out"}}
    storage.write_bytes_atomic(_pointer(listing.out), json.dumps(document, indent=2).encode())
    remove_other_versions(listing.out, listing)
    if listing.repeats:
        log.warning("%d lines of the list name an image listed already; each image is labelled once", listing.repeats)
    return listing


def copy_listing(source: Listing, out: str) -> Listing:
    """``source`` (another OUT's listing, as ``labeler rescore`` takes it) written into ``out`` as its own and
    published: the same images, ids and version."""
    copy = Listing(out=out, version=source.version, kind=source.kind, images=source.images, next_id=source.next_id,
                   parts=source.parts, repeats=source.repeats)
    for name in [out_folder.LISTING_IDS_NAME] + [out_folder.listing_part_name(i) for i in range(source.parts)]:
        storage.write_bytes_atomic(f"{copy.folder}/{name}", storage.read_bytes(f"{source.folder}/{name}"))
    return publish_listing(copy)


def store_listing(out: str, entries: SourceEntries, previous: Listing | None = None, *,
                  from_labels: bool = False) -> Listing:
    """:func:`write_listing`, then :func:`publish_listing`."""
    return publish_listing(write_listing(out, entries, previous, from_labels=from_labels))


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

