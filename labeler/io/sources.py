"""Image sources of ``labeler run``: a folder or prefix, a ``.txt`` list of URIs,
or a COCO JSON, each listed to ``(image_id, uri)`` rows.

Folder and list sources get ids derived from the image's path (relative to
the folder) or URI: stable across reruns, and unchanged when other images
are added. COCO sources keep their own ids, so outputs can be evaluated
against them.

Local paths are made absolute when listed, so the labels name each image
wherever they are read from: a folder or ``--image-root`` relative to the
working folder, a relative line of a ``.txt`` list or a COCO ``file_name``
relative to the file that holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import read_coco
from labeler.io.images import image_extensions

log = logging.getLogger(__name__)

ID_BITS = 53  # ids stay exact in JSON readers that use doubles


@dataclass(frozen=True)
class SourceListing:
    """The images of a source: ``image_id`` (int64) and ``uri`` (string) columns."""

    table: pa.Table
    kind: str  # folder, list or coco

    def __len__(self) -> int:
        return self.table.num_rows


def stable_image_id(key: str) -> int:
    """A positive 53-bit id from a path or URI (BLAKE2b)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - ID_BITS)) or 1


def _with_protocol(fs: Any, path: str, source: str) -> str:
    if storage.is_local(source):
        return path
    return fs.unstrip_protocol(path)


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in image_extensions()


def absolute(uri: str) -> str:
    """A local path made absolute (``file://`` dropped); other URIs as they are."""
    return os.path.abspath(uri.removeprefix("file://")) if storage.is_local(uri) else uri


def _local_image_paths(root: str) -> list[str]:
    """Paths under a local folder with image names, links included as they are.

    Broken links, symlink loops and folders named like images are listed too,
    so that they end as error rows with their reason instead of vanishing.
    Symlinked folders are not followed (no cycles).
    """
    found = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        found += [os.path.join(folder, name) for name in dirnames + filenames if _is_image_name(name)]
    return found


def _folder(source: str) -> SourceListing:
    source = absolute(source)
    fs, root = storage.filesystem(source)
    if not fs.isdir(root):
        raise LabelerError(f"{source}: not a folder, prefix, .txt list or COCO .json")
    if storage.is_local(source):
        paths = sorted(_local_image_paths(root))
    else:
        found = fs.find(root, withdirs=False, detail=True)
        paths = sorted(path for path, info in found.items() if info.get("type") == "file" and _is_image_name(path))
    root_prefix = root.rstrip("/") + "/"
    ids = [stable_image_id(path.removeprefix(root_prefix)) for path in paths]
    uris = [_with_protocol(fs, path, source) for path in paths]
    return SourceListing(_table(ids, uris, source), "folder")


def _uri_list(source: str) -> SourceListing:
    text = storage.read_bytes(source).decode("utf-8", errors="replace")
    folder = posixpath.dirname(source) if not storage.is_local(source) else os.path.dirname(absolute(source))
    uris: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        uri = line.strip()
        if not uri or uri.startswith("#"):
            continue
        if "://" not in uri and not os.path.isabs(uri):
            uri = f"{folder}/{uri}" if not storage.is_local(source) else os.path.normpath(os.path.join(folder, uri))
        if uri in seen:
            log.warning("%s: %s is listed more than once; labelled once", source, uri)
            continue
        seen.add(uri)
        uris.append(uri)
    return SourceListing(_table([stable_image_id(u) for u in uris], uris, source), "list")


def _coco(source: str, image_root: str | None) -> SourceListing:
    dataset = read_coco(source)
    root = absolute(image_root) if image_root else (
        posixpath.dirname(source) if not storage.is_local(source) else os.path.dirname(absolute(source))
    )
    ids, uris = [], []
    for image in sorted(dataset.images.values(), key=lambda i: i.id):
        ids.append(image.id)
        uris.append(storage.join_under(root, image.file_name, what=f"{source}: image {image.id}"))
    return SourceListing(_table(ids, uris, source, check_collisions=False), "coco")


def _table(ids: list[int], uris: list[str], source: str, check_collisions: bool = True) -> pa.Table:
    if check_collisions and len(set(ids)) != len(ids):
        raise LabelerError(f"{source}: two images hash to the same id; rename one of them")
    return pa.table({"image_id": pa.array(ids, pa.int64()), "uri": pa.array(uris, pa.string())})


def list_source(source: str, image_root: str | None = None) -> SourceListing:
    """List the images of a source.

    Raises:
        LabelerError: the source does not exist or cannot be read.
    """
    lowered = source.lower()
    if lowered.endswith(".json"):
        return _coco(source, image_root)
    if image_root is not None:
        raise LabelerError("--image-root applies to COCO JSON sources only")
    if lowered.endswith(".txt"):
        return _uri_list(source)
    if not storage.exists(source):
        raise LabelerError(f"{source}: no such folder or prefix")
    return _folder(source)
