"""A run's output folder: every name in it, what marks it as labeler's, and what labeler may remove.

``_state/settings.json`` is the marker: the settings a rerun must match and the folder's ``out_id``, a
random id its ``coco.json`` and ``run.json`` carry too. labeler removes only what it can prove it wrote:
shards and temporaries by their names, ``coco.json`` and ``run.json`` when they carry the ``out_id``, and
the ``_state/`` entries it knows; a folder with other content and no marker is refused (docs/formats.md,
"Resuming").
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import uuid
from typing import Any

from labeler.errors import LabelerError
from labeler.io import storage

log = logging.getLogger(__name__)

STATE_DIR = "_state"
SETTINGS_NAME = "settings.json"
LOCK_NAME = "lock"
REMOVED_NAME = "removed"
LABELS_DIR = "labels"
COCO_DIR = "coco"
#: ``proposals/part-<hex>.parquet``: a shard's kept proposals (``--keep-proposals``), named as the shard.
PROPOSALS_DIR = "proposals"
LISTING_NAME = "listing.json"
LISTING_DIR = "listing"
#: ``_state/compile-cache/``: torch.compile's artifacts shared by the actors (labeler.models.compile_cache);
#: kept by ``--overwrite``, as they do not depend on the labels.
COMPILE_CACHE_DIR = "compile-cache"
COCO_NAME = "coco.json"
MANIFEST_NAME = "run.json"
#: A label shard is ``labels/part-<hex>.parquet``, its COCO twin ``coco/part-<hex>.json``; a shard that
#: cannot be read is moved aside to ``<name>.unreadable``.
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
COCO_SHARD_SUFFIX = ".json"
UNREADABLE_SUFFIX = ".unreadable"
#: ``_state/lock/<claim id>.json``: one run's claim on OUT (labeler.outdir.lock).
CLAIM_SUFFIX = ".json"
#: ``_state/listing/<version>/``: ``ids.npy`` and ``part-<index>.parquet`` (labeler.outdir.listing).
LISTING_IDS_NAME = "ids.npy"
FORMAT_MARKER = "labeler-run-output"
#: Bytes at the head of ``coco.json`` / ``run.json`` searched for the folder's id.
ID_SEARCH_BYTES = 4096

_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")
_SHARD = re.compile(rf"^{SHARD_PREFIX}[0-9a-f]{{32}}{re.escape(SHARD_SUFFIX)}$")
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_COCO_SHARD = re.compile(rf"^{SHARD_PREFIX}[0-9a-f]{{32}}{re.escape(COCO_SHARD_SUFFIX)}$")
#: ``_state/`` entries labeler writes (the lock folder included).
_STATE_ENTRIES = frozenset({SETTINGS_NAME, LOCK_NAME, REMOVED_NAME, LISTING_NAME, LISTING_DIR, COMPILE_CACHE_DIR})


def join(out: str, *names: str) -> str:
    """``out/name/...`` for paths and URIs alike."""
    return "/".join([out.rstrip("/"), *names])


def compile_cache_dir(out: str) -> str:
    """``OUT/_state/compile-cache``, the default ``--compile-cache``."""
    return join(out, STATE_DIR, COMPILE_CACHE_DIR)


def listing_part_name(index: int) -> str:
    """The name of a listing's ``index``-th part."""
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def is_temporary(name: str) -> bool:
    """True for the name of a file :func:`storage.write_bytes_atomic` was still writing."""
    return bool(_TEMPORARY.search(name))


def is_hex_id(name: str) -> bool:
    """True for a name labeler made from a random id (32 hex digits)."""
    return bool(_HEX_ID.match(name))


def is_shard_name(name: str) -> bool:
    """True for the name of a Parquet label shard labeler published."""
    return bool(_SHARD.match(name))


def is_coco_shard_name(name: str) -> bool:
    """True for the name of a COCO shard labeler published."""
    return bool(_COCO_SHARD.match(name))


def _names(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if not fs.isdir(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_settings(out: str) -> dict[str, Any] | None:
    """The marker of a labeler OUT: ``{"out_id", "settings"}``, or None when absent."""
    uri = join(out, STATE_DIR, SETTINGS_NAME)
    if not storage.exists(uri):
        return None
    try:
        document = json.loads(storage.read_bytes(uri))
    except ValueError:
        raise LabelerError(f"{uri}: corrupt (not JSON); move OUT aside or use another --out") from None
    if not (isinstance(document, dict) and document.get("format") == FORMAT_MARKER
            and isinstance(document.get("out_id"), str) and isinstance(document.get("settings"), dict)):
        raise LabelerError(f"{uri}: corrupt (not labeler's settings); move OUT aside or use another --out")
    return {"out_id": document["out_id"], "settings": document["settings"]}


def write_settings(out: str, settings: dict[str, Any], out_id: str) -> None:
    document = {"format": FORMAT_MARKER, "out_id": out_id, "settings": settings}
    storage.write_bytes_atomic(join(out, STATE_DIR, SETTINGS_NAME), json.dumps(document, indent=2, sort_keys=True).encode())


def remove_temporaries(out: str) -> int:
    """Delete leftovers of interrupted atomic writes in OUT, ``_state/``, ``labels/`` and ``coco/``;
    returns how many."""
    removed = 0
    for folder in (out.rstrip("/"), join(out, STATE_DIR), join(out, LABELS_DIR), join(out, COCO_DIR),
                   join(out, PROPOSALS_DIR), compile_cache_dir(out)):
        for name in _names(folder):
            if is_temporary(name):
                storage.remove(join(folder, name))
                removed += 1
    return removed


def _foreign_entries(out: str) -> list[str]:
    """Entries of OUT that labeler did not make (before any marker exists)."""
    foreign = []
    for name in _names(out):
        if name == STATE_DIR:
            foreign += [f"{STATE_DIR}/{n}" for n in _names(join(out, STATE_DIR))
                        if n not in _STATE_ENTRIES and not is_temporary(n)]
        elif not is_temporary(name):
            foreign.append(name)
    return foreign


def check_not_foreign(out: str) -> None:
    """Refuse a non-empty OUT that holds no labeler run, before anything is written there.

    Raises:
        LabelerError: naming a few of the entries found.
    """
    if storage.exists(join(out, STATE_DIR, SETTINGS_NAME)):
        return
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise LabelerError(
            f"{out} is not empty ({shown}) and holds no labeler run; labeler writes only into an empty folder "
            "or one of its own runs: pass a new --out"
        )


def _carries_out_id(uri: str, out_id: str | None) -> bool:
    if not out_id or not storage.exists(uri):
        return False
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as handle:
        head = handle.read(ID_SEARCH_BYTES)
    return out_id.encode() in head


def remove_own_file(out: str, name: str, out_id: str | None) -> bool:
    """Delete ``OUT/name`` (``coco.json``, ``run.json``) if it carries this folder's ``out_id``."""
    if not _carries_out_id(join(out, name), out_id):
        return False
    storage.remove(join(out, name))
    return True


def remove_own_entries(out: str, out_id: str | None) -> list[str]:
    """Delete what labeler wrote in OUT (``--overwrite``); returns the entries left that it did not write."""
    labels, removed, coco = join(out, LABELS_DIR), join(out, STATE_DIR, REMOVED_NAME), join(out, COCO_DIR)
    proposals = join(out, PROPOSALS_DIR)
    for folder in (labels, removed, coco, proposals):
        for name in _names(folder):
            if is_shard_name(name) or is_coco_shard_name(name) or is_temporary(name):
                storage.remove(join(folder, name))
        if not _names(folder):
            storage.remove(folder, recursive=True)
    storage.remove(join(out, STATE_DIR, LISTING_NAME))
    storage.remove(join(out, STATE_DIR, LISTING_DIR), recursive=True)
    for name in (COCO_NAME, MANIFEST_NAME):
        remove_own_file(out, name, out_id)
    storage.remove(join(out, STATE_DIR, SETTINGS_NAME))
    return [n for n in _names(out) if n != STATE_DIR] + [f"{LABELS_DIR}/{n}" for n in _names(labels)] + [
        f"{COCO_DIR}/{n}" for n in _names(coco)] + [f"{PROPOSALS_DIR}/{n}" for n in _names(proposals)]


def prepare(out: str, settings: dict[str, Any], overwrite: bool) -> str:
    """Make OUT ready for a run with ``settings``; returns the folder's ``out_id``.

    A new or empty OUT gets a marker. A labeler OUT with the same settings is
    resumed. One with other settings is refused, or with ``overwrite`` cleared
    of labeler's own files (never of others) and started anew. The caller
    holds the folder's lock.

    Raises:
        LabelerError: OUT holds another run and ``overwrite`` is not set, or foreign files.
    """
    check_not_foreign(out)
    marker = read_settings(out)
    if marker is not None and not overwrite:
        previous = marker["settings"]
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
            raise LabelerError(
                f"{out} holds a run with other settings ({details}); rerun with the same settings to resume, "
                "pass --overwrite to replace that run's labels, or use another --out"
            )
        return marker["out_id"]
    if marker is not None:
        kept = remove_own_entries(out, marker["out_id"]) if overwrite else []
        if kept:
            log.warning("%s: --overwrite left alone what labeler did not write there: %s", out, ", ".join(kept[:5]))
    out_id = uuid.uuid4().hex
    write_settings(out, settings, out_id)
    return out_id
