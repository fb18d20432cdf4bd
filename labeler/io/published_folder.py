"""Folders a command writes whole: an export, pictures, a review, a merged training set, an estimate.

Built beside the target (``.<name>.labeler-tmp-<32 hex>``, same file system) and published in one step
(on Linux an atomic exchange, ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames), so a reader sees
the previous folder or the new one, never a mix. Each holds a marker (:data:`MARKER_NAME`); a target is
replaced only when empty, or when it has a marker of the same kind and nothing in it changed since (a
status-change time after the marker's), Ultralytics' ``labels/**/*.cache`` excepted (docs/formats.md,
"Exports"). Leftovers of a kill carry the marker and are deleted by the next command on that target.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from labeler import __version__
from labeler.errors import LabelerError
from labeler.io import storage

MARKER_NAME = ".labeler.json"
FORMAT = "labeler-folder"
#: Kinds of folders, as the marker names them.
KINDS = ("export", "pictures", "review", "training-set", "estimate")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.labeler-(tmp|old)-[0-9a-f]{32}$")
#: Files a trainer writes into a set it reads, which labeler may remove with the set (module doc).
_DERIVED_CACHES = re.compile(r"^labels/(.+/)?[^/]+\.cache$")
#: Foreign entries named in a refusal.
SHOWN = 3


def local_folder(uri: str, option: str = "--out") -> Path:
    """``uri`` as a local path; these folders are local (copied images, links, pictures).

    Raises:
        LabelerError: a URI with another protocol.
    """
    if not storage.is_local(uri):
        raise LabelerError(f"{option} {uri}: this command writes a local folder; pass a local path")
    return Path(os.path.abspath(uri.removeprefix("file://")))


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder labeler wrote, or None (no marker, or not one of ours)."""
    try:
        document = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("format") == FORMAT else None


def _changed_since(folder: Path, since_ns: int) -> Iterator[str]:
    """Entries of ``folder`` (relative paths) added or changed after ``since_ns``, caches excepted."""
    for parent, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(parent, name)
            relative = os.path.relpath(path, folder)
            if relative == MARKER_NAME or _DERIVED_CACHES.match(relative.replace(os.sep, "/")):
                continue
            if os.lstat(path).st_ctime_ns > since_ns and not os.path.isdir(path):
                yield relative


def check_replaceable(folder: Path, kind: str, option: str = "--out") -> None:
    """Refuse, before any work, a target this command may not replace (module doc).

    Raises:
        LabelerError: the target is a file, holds another folder's content, or holds
            files added or changed since labeler wrote it, naming a few of them.
    """
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise LabelerError(f"{option} {folder} is {'a link' if folder.is_symlink() else 'a file'}; pass a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return
    marker = read_marker(folder)
    if marker is None:
        entries = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(entries[:SHOWN]) + (", ..." if len(entries) > SHOWN else "")
        raise LabelerError(f"{option} {folder} is not empty ({shown}) and was not written by labeler; "
                           "labeler replaces only an empty folder or one it wrote: pass a new --out")
    if marker.get("kind") != kind:
        raise LabelerError(f"{option} {folder} holds a labeler {marker.get('kind')}, not a {kind}: pass another --out")
    changed = []
    for relative in _changed_since(folder, (folder / MARKER_NAME).lstat().st_ctime_ns):
        changed.append(relative)
        if len(changed) > SHOWN:
            break
    if changed:
        shown = ", ".join(changed[:SHOWN]) + (", ..." if len(changed) > SHOWN else "")
        raise LabelerError(f"{option} {folder} holds files added or changed since labeler wrote it ({shown}); "
                           "move them out, or pass another --out: labeler never deletes a file it did not write")


def remove_leftovers(folder: Path) -> int:
    """Delete what killed commands left beside ``folder`` (marked temporaries and replaced folders)."""
    removed = 0
    if not folder.parent.is_dir():
        return 0
    for entry in folder.parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == folder.name and entry.is_dir() and not entry.is_symlink() \
                and read_marker(entry) is not None:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _libc_renameat2():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2``); False where the system cannot."""
    function = _libc_renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False


def _publish(staging: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(staging, folder)
        return
    if not any(folder.iterdir()):
        folder.rmdir()  # empty: nothing of anybody's is lost
        os.rename(staging, folder)
        return
    if exchange(staging, folder):
        shutil.rmtree(staging)  # now the previous folder
        return
    aside = folder.parent / f".{folder.name}.labeler-old-{uuid.uuid4().hex}"
    os.rename(folder, aside)
    os.rename(staging, folder)
    shutil.rmtree(aside)


def _marker(kind: str, details: dict) -> str:
    return json.dumps({**details, "format": FORMAT, "kind": kind, "labeler_version": __version__,
                       "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                      indent=2, ensure_ascii=False)


@contextlib.contextmanager
def building(folder: Path, kind: str, details: dict | None = None, option: str = "--out") -> Iterator[Path]:
    """A new folder to fill, published at ``folder`` when the block exits without an exception
    (module doc); on an exception it is deleted and ``folder`` stays as it was.

    ``details`` go into the marker (what the command was asked for).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    check_replaceable(folder, kind, option)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    staging = folder.parent / f".{folder.name}.labeler-tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    marker = staging / MARKER_NAME
    try:
        marker.write_text(_marker(kind, details or {}), encoding="utf-8")  # a leftover is known as ours
        yield staging
        marker.unlink()
        marker.write_text(_marker(kind, details or {}), encoding="utf-8")  # written last: every file is older
        check_replaceable(folder, kind, option)  # nothing arrived while it was built
        _publish(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it, both resolved (links followed)."""
    resolved, root = os.path.realpath(path), os.path.realpath(folder)
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def check_apart(folder: Path, source_root: str | None, option: str = "--out") -> None:
    """Refuse an output folder that overlaps the run's local source root: one inside the
    other would let this command replace the user's images, and a ``--relist`` would
    label what it wrote.

    Raises:
        LabelerError: naming both folders.
    """
    if not source_root or not storage.is_local(source_root):
        return
    root = source_root.removeprefix("file://")
    if is_inside(folder, root) or is_inside(root, folder):
        raise LabelerError(f"{option} {folder} overlaps the run's image folder {root}; "
                           "write outside it so no source image can be replaced")


def check_source_image_outside(uri: str, folder: Path, option: str = "--out") -> None:
    """Refuse a local source image that lies inside the output folder (replacing the folder would delete it).

    Raises:
        LabelerError: naming the image.
    """
    if storage.is_local(uri) and is_inside(uri.removeprefix("file://"), folder):
        raise LabelerError(f"{option} {folder} holds the run's image {uri}; write outside it so no source image "
                           "can be replaced")
