"""Label shards: Parquet under ``OUT/labels`` with their COCO twins under ``OUT/coco`` and, with
``--keep-proposals``, their kept proposals under ``OUT/proposals`` (docs/formats.md).

A shard is published whole, its twins just before it: the Parquet shard is the commit point, so an
image is finished exactly when it is in a listed shard, and a twin without its shard is not data. A
shard's footer carries its counts (:class:`LabelCounts`), error tally and twin size, so totals come from
footers, not rows. :class:`ShardIndex` is what a run knows of its shards (finished ids, totals, rows to
take out at the end); it reads only the id column and footer of each shard, once per run, and follows
the shards as a pass publishes them, so the end of a run reads only the last few.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_writer import coco_shard_bytes
from labeler.io.labels import CATEGORIES_KEY, LABELS_SCHEMA, STATUS_OK, with_category_names
from labeler.outdir import layout as out_folder
from labeler.outdir.error_tally import ERRORS_KEY, ErrorTally
from labeler.outdir.id_set import IdSet

log = logging.getLogger(__name__)

COUNTS_KEY = b"labeler.counts"
#: Footer key of a shard: the size of its COCO twin in bytes, so a truncated twin is found from a listing.
COCO_BYTES_KEY = b"labeler.coco_bytes"
#: Rows of images that left the source: kept out of the labels, but not thrown away.
REMOVED_DIR = f"{out_folder.STATE_DIR}/removed"
#: Shards read at once by :class:`ShardIndex` (object stores answer many requests in parallel).
SCAN_THREADS = 16
#: Seconds between reads of new shards while a pass runs.
FOLLOW_SECONDS = 20.0


@dataclass
class LabelCounts:
    """What label rows hold."""

    images_ok: int = 0
    images_error: int = 0
    detections: int = 0
    proposals: int = 0
    transfer_bytes_ok: int = 0  # summed over ok images

    @property
    def transfer_bytes_per_image(self) -> float:
        """Mean bytes an ok image carried from the SAM2 stage to the DINOv2 stage."""
        return self.transfer_bytes_ok / self.images_ok if self.images_ok else 0.0

    @classmethod
    def of_table(cls, table: pa.Table) -> LabelCounts:
        ok = pc.equal(table.column("status"), STATUS_OK)
        ok_rows = int(pc.sum(ok).as_py() or 0)
        return cls(
            images_ok=ok_rows,
            images_error=table.num_rows - ok_rows,
            detections=int(pc.sum(pc.list_value_length(table.column("detections"))).as_py() or 0),
            proposals=int(pc.sum(table.column("proposals")).as_py() or 0),
            transfer_bytes_ok=int(pc.sum(table.column("transfer_bytes").filter(ok)).as_py() or 0),
        )

    def add(self, other: LabelCounts, sign: int = 1) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))


def labels_dir(out: str) -> str:
    return out_folder.join(out, out_folder.LABELS_DIR)


def coco_dir(out: str) -> str:
    return out_folder.join(out, out_folder.COCO_DIR)


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def proposals_dir(out: str) -> str:
    return out_folder.join(out, out_folder.PROPOSALS_DIR)


def coco_twin(out: str, shard_uri: str) -> str:
    """The COCO shard of a Parquet shard."""
    return f"{coco_dir(out)}/{_name(shard_uri).removesuffix(out_folder.SHARD_SUFFIX)}{out_folder.COCO_SHARD_SUFFIX}"


def kept_twin(out: str, shard_uri: str) -> str:
    """The kept-proposals file of a Parquet shard (:mod:`labeler.io.kept_proposals`): the same name under
    ``proposals/``."""
    return f"{proposals_dir(out)}/{_name(shard_uri)}"


def read_kept_twin(out: str, shard_uri: str) -> pa.Table | None:
    """A shard's kept proposals, or None when it has none."""
    uri = kept_twin(out, shard_uri)
    return read_shard(uri) if storage.exists(uri) else None


def _remove_shard(out: str, uri: str) -> None:
    """Delete a Parquet shard, then its twins."""
    storage.remove(uri)
    storage.remove(coco_twin(out, uri))
    storage.remove(kept_twin(out, uri))


def write_shard(out: str, table: pa.Table, folder: str | None = None,
                categories: list[Category] | None = None, kept: pa.Table | None = None) -> str:
    """Publish one shard under ``labels/`` (or ``folder``), each file atomically; returns its URI.

    With ``categories``, each detection gets its class name and its COCO twin
    is published first; the footer of the Parquet shard carries the table's
    :class:`LabelCounts` and, with ``categories``, the categories themselves,
    so that a shard names its classes on its own. ``kept``, the rows' kept
    proposals (one per row, in order, with their footer), is published first
    of all, under ``proposals/``.
    """
    stored_categories = (table.schema.metadata or {}).get(CATEGORIES_KEY)
    table = table.cast(LABELS_SCHEMA)
    uri = f"{folder or labels_dir(out)}/{out_folder.SHARD_PREFIX}{uuid.uuid4().hex}{out_folder.SHARD_SUFFIX}"
    if kept is not None:
        if kept.column("image_id").to_pylist() != table.column("image_id").to_pylist():
            raise ValueError("kept proposals must hold the shard's rows, in order")
        buffer = io.BytesIO()
        pq.write_table(kept, buffer, compression="zstd")
        storage.write_bytes_atomic(kept_twin(out, uri), buffer.getvalue())
    metadata = {COUNTS_KEY: json.dumps(asdict(LabelCounts.of_table(table))).encode(),
                ERRORS_KEY: json.dumps(ErrorTally.of_table(table).to_json()).encode()}
    if categories is not None:
        table = with_category_names(table, {c.id: c.name for c in categories})
        metadata[CATEGORIES_KEY] = json.dumps([{"id": c.id, "name": c.name} for c in categories],
                                              ensure_ascii=False).encode()
        metadata[COCO_BYTES_KEY] = str(write_coco_twin(out, uri, table, categories)).encode()
    elif stored_categories:
        metadata[CATEGORIES_KEY] = stored_categories
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer, compression="zstd")
    storage.write_bytes_atomic(uri, buffer.getvalue())
    return uri


def write_coco_twin(out: str, shard_uri: str, table: pa.Table, categories: list[Category]) -> int:
    """Publish the COCO twin of the shard ``shard_uri`` holding ``table``; returns its size in bytes."""
    data = coco_shard_bytes(table, categories, {"description": "labeler predictions", "shard": _name(shard_uri)})
    storage.write_bytes_atomic(coco_twin(out, shard_uri), data)
    return len(data)


def _list_names(folder: str, is_ours) -> list[str]:
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return []
    return sorted(name for name in (_name(p) for p in fs.ls(path, detail=False)) if is_ours(name))


def list_shards(out: str, folder: str | None = None) -> list[str]:
    """URIs of the published Parquet shards under ``labels/`` (or ``folder``), sorted;
    temporaries and other files are not shards."""
    folder = folder or labels_dir(out)
    return [f"{folder}/{name}" for name in _list_names(folder, out_folder.is_shard_name)]


def list_coco_shards(out: str) -> list[str]:
    """URIs of the COCO shards whose Parquet twin is published, sorted."""
    published = {_name(uri).removesuffix(out_folder.SHARD_SUFFIX) for uri in list_shards(out)}
    names = _list_names(coco_dir(out), out_folder.is_coco_shard_name)
    return [f"{coco_dir(out)}/{name}" for name in names if name.removesuffix(out_folder.COCO_SHARD_SUFFIX) in published]


def remove_orphan_twins(out: str) -> int:
    """Delete COCO shards and kept proposals without a published Parquet shard; returns how many."""
    published = {_name(uri) for uri in list_shards(out)}
    orphans = [f"{coco_dir(out)}/{name}" for name in _list_names(coco_dir(out), out_folder.is_coco_shard_name)
               if name.removesuffix(out_folder.COCO_SHARD_SUFFIX) + out_folder.SHARD_SUFFIX not in published]
    orphans += [f"{proposals_dir(out)}/{name}" for name in _list_names(proposals_dir(out), out_folder.is_shard_name)
                if name not in published]
    for uri in orphans:
        storage.remove(uri)
    return len(orphans)


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def iter_shard_tables(out: str, columns: list[str] | None = None, folder: str | None = None
                      ) -> Iterator[tuple[str, pa.Table]]:
    """Each published shard under ``labels/`` (or ``folder``) and its table (one shard in memory at a time)."""
    for uri in list_shards(out, folder):
        yield uri, read_shard(uri, columns)


@dataclass(frozen=True)
class ShardFacts:
    """What :class:`ShardIndex` reads of a shard: its ids, and its footer's counts and twin size."""

    ids: np.ndarray
    counts: LabelCounts
    errors: ErrorTally
    coco_bytes: int | None  # None for a shard written without categories: it has no COCO twin


def read_ids_and_counts(uri: str) -> ShardFacts:
    """A shard's image ids, and the counts, error tally and COCO twin size in its footer.

    Raises:
        KeyError: the footer lacks them (not a shard :func:`write_shard` wrote).
    """
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        shard = pq.ParquetFile(handle)
        metadata = shard.schema_arrow.metadata or {}
        ids = shard.read(columns=["image_id"]).column("image_id").to_numpy()
    coco_bytes = int(metadata[COCO_BYTES_KEY]) if COCO_BYTES_KEY in metadata else None
    return ShardFacts(ids, LabelCounts(**json.loads(metadata[COUNTS_KEY])),
                      ErrorTally.from_json(json.loads(metadata[ERRORS_KEY])), coco_bytes)


def _scan_one(uri: str) -> ShardFacts | Exception:
    try:
        return read_ids_and_counts(uri)
    except (pa.ArrowInvalid, KeyError, TypeError, ValueError) as error:
        return error


def _move_rows_out(out: str, uri: str, table: pa.Table, leaving: np.ndarray,
                   categories: list[Category] | None) -> None:
    """Move the rows ``leaving`` of the shard ``uri`` (read as ``table``) to ``_state/removed/``: they
    are written there and the rest as a new shard before the old shard and its twin are deleted, so a
    kill at any moment leaves every row somewhere and the next run finishes the move."""
    write_shard(out, table.filter(pa.array(leaving)), folder=out_folder.join(out, REMOVED_DIR))
    if (~leaving).any():
        staying = pa.array(~leaving)
        kept = read_kept_twin(out, uri)
        write_shard(out, table.filter(staying), categories=categories,
                    kept=None if kept is None else kept.filter(staying))
    _remove_shard(out, uri)


def retire_changed_images(out: str, listed: pa.Table, categories: list[Category] | None) -> int:
    """Move to ``_state/removed/`` the rows of images whose id the COCO listing ``listed``
    (``image_id`` ascending, ``uri``) gives to another file now; returns how many.

    A COCO source's ids are its own: ``--relist`` after an id was pointed at
    another file must label that file, and its old labels must go. The listing is
    written but not yet published when this runs, so a kill leaves the previous
    listing in force and the next ``--relist`` finds the same rows.
    """
    ids = listed.column("image_id").to_numpy()
    uris = listed.column("uri").combine_chunks()
    moved = 0
    for uri in list_shards(out):
        table = read_shard(uri, ["image_id", "uri"])  # the rest of a shard is read only when it changes
        shard_ids = table.column("image_id").to_numpy()
        position = np.minimum(np.searchsorted(ids, shard_ids), max(ids.size - 1, 0))
        found = (ids[position] == shard_ids) if ids.size else np.zeros(shard_ids.size, dtype=bool)
        if not found.any():
            continue
        now = uris.take(pa.array(position[found]))
        changed = np.zeros(shard_ids.size, dtype=bool)
        changed[found] = ~pc.equal(now, table.column("uri").combine_chunks().filter(pa.array(found))).to_numpy(
            zero_copy_only=False)
        if changed.any():
            _move_rows_out(out, uri, read_shard(uri), changed, categories)
            moved += int(changed.sum())
    if moved:
        log.warning("%s: %d image ids of the source now name other files; their old rows moved to %s/ and the "
                    "files they name now are labelled", out, moved, out_folder.join(out, REMOVED_DIR))
    return moved


@dataclass(frozen=True)
class Reconciled:
    """Rows the final pass took out of the labels."""

    duplicates: int  # a second copy of an image (a retried write task, a late task of an abandoned pass)
    not_listed: int  # images the source no longer lists (moved to ``_state/removed/``)


class ShardIndex:
    """Finished ids, totals and rows to take out, over the shards read so far (module doc)."""

    def __init__(self, out: str, listed: IdSet, done: IdSet):
        self.out = out
        self.listed = listed
        self.done = done  # the listed ids found in shards; empty at first
        self.counts = LabelCounts()
        self.errors = ErrorTally()
        self._seen: dict[str, int | None] = {}  # shard -> size of its COCO twin (None: not known)
        self._fixes: dict[str, np.ndarray] = {}  # shard -> rows to keep
        self._updating = threading.Lock()

    @contextlib.contextmanager
    def following(self, every: float = FOLLOW_SECONDS) -> Iterator[None]:
        """Keep reading new shards every ``every`` seconds while the block runs (a pipeline
        pass), so that little is left to read after its last image."""
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(every):
                try:
                    with self._updating:
                        self._update()
                except Exception as error:  # noqa: BLE001 - the update after the pass reads them again
                    log.warning("reading new shards failed (%s); they are read at the end of the pass", error)

        thread = threading.Thread(target=follow, name="labeler-shard-index", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def update(self) -> None:
        """Read the shards published since the last update."""
        with self._updating:
            self._update()

    def _update(self) -> None:
        new = [uri for uri in list_shards(self.out) if uri not in self._seen]
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            for start in range(0, len(new), 4 * SCAN_THREADS):
                window = new[start:start + 4 * SCAN_THREADS]
                for uri, result in zip(window, pool.map(_scan_one, window)):
                    if isinstance(result, Exception):
                        self._set_aside(uri, result)
                    else:
                        self._add(uri, result)

    def _add(self, uri: str, facts: ShardFacts) -> None:
        ids, counts, errors = facts.ids, facts.counts, facts.errors
        self._seen[uri] = facts.coco_bytes
        order = np.argsort(ids, kind="stable")
        repeat = np.zeros(ids.size, dtype=bool)
        repeat[order[1:]] = ids[order][1:] == ids[order][:-1]
        listed = self.listed.contains(ids)
        keep = ~repeat & ~self.done.contains(ids) & listed
        self.done.add(ids[listed])
        self.counts.add(counts)
        self.errors.add(errors)
        if not keep.all():
            self._fixes[uri] = keep

    def _set_aside(self, uri: str, error: Exception) -> None:
        fs, path = storage.filesystem(uri)
        fs.mv(path, path + out_folder.UNREADABLE_SUFFIX)
        log.warning("%s: not a readable label shard (%s); moved aside to %s%s, its images are labelled again",
                    uri, error, uri, out_folder.UNREADABLE_SUFFIX)

    def repair_coco_twins(self, categories: list[Category]) -> int:
        """Write anew the COCO twin of every shard read whose twin is missing or not of the size
        its shard's footer records (deleted or truncated by something other than labeler);
        returns how many. Costs one listing of ``coco/``, whatever the number of shards."""
        fs, path = storage.filesystem(coco_dir(self.out))
        sizes = {_name(entry["name"]): entry.get("size") for entry in fs.ls(path, detail=True)} \
            if fs.exists(path) else {}
        repaired = 0
        for uri, expected in sorted(self._seen.items()):
            size = sizes.get(_name(coco_twin(self.out, uri)))
            if size is None or (expected is not None and size != expected):
                self._seen[uri] = write_coco_twin(self.out, uri, read_shard(uri), categories)
                repaired += 1
        if repaired:
            log.warning("%s: %d COCO shards were missing or damaged; written anew from their Parquet shards",
                        self.out, repaired)
        return repaired

    @property
    def shards(self) -> int:
        """Published Parquet shards read so far."""
        return len(self._seen)

    def finished(self) -> int:
        """Listed images in the shards."""
        return len(self.done)

    def reconcile(self, categories: list[Category] | None) -> Reconciled:
        """Leave each listed image in exactly one shard, and no other image.

        Repeats after the first copy seen are dropped; rows of images the
        source no longer lists (removed or renamed since they were labelled)
        are moved to ``_state/removed/``. A shard that changes is written anew
        (with its COCO twin) before the old one is deleted, so a kill at any
        moment leaves every image at least once, and the next run finishes.
        """
        duplicates = not_listed = 0
        for uri, keep in sorted(self._fixes.items()):
            table = read_shard(uri)
            listed = self.listed.contains(table.column("image_id").to_numpy())
            duplicates += int((~keep & listed).sum())
            not_listed += int((~listed).sum())
            if not listed.all():
                write_shard(self.out, table.filter(pa.array(~listed)), folder=out_folder.join(self.out, REMOVED_DIR))
            kept = table.filter(pa.array(keep))
            if kept.num_rows:
                proposals = read_kept_twin(self.out, uri)
                proposals = None if proposals is None else proposals.filter(pa.array(keep))
                self._seen[write_shard(self.out, kept, categories=categories, kept=proposals)] = None
            self.counts.add(LabelCounts.of_table(table), -1)
            self.counts.add(LabelCounts.of_table(kept))
            self.errors.add(ErrorTally.of_table(table), -1)
            self.errors.add(ErrorTally.of_table(kept))
            _remove_shard(self.out, uri)
            self._seen.pop(uri, None)
        self._fixes = {}
        if not_listed:
            log.warning("%s: %d labelled images are no longer in the source; their rows moved to %s/",
                        self.out, not_listed, out_folder.join(self.out, REMOVED_DIR))
        return Reconciled(duplicates, not_listed)


def iter_label_rows(out: str, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
    """Label rows of all shards, a few hundred in memory at a time."""
    if not list_shards(out):
        raise LabelerError(f"{out}: no label shards under labels/")
    for _, table in iter_shard_tables(out, columns):
        for batch in table.to_batches(max_chunksize=batch_rows):
            yield from batch.to_pylist()
