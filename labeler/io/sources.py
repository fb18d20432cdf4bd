"""Image sources of ``labeler run``: a folder or prefix, a ``.txt`` list of URIs,
or a COCO JSON, read as a stream of image URIs (folders and lists) or of
``(image_id, uri)`` rows (COCO sources keep their own ids, so outputs can be
evaluated against them). The run stores what is read here as its listing
(:mod:`labeler.outdir.listing`), which gives folder and list images their ids.

Local paths are made absolute when listed, so the labels name each image
wherever they are read from: a folder or ``--image-root`` relative to the
working folder, a relative line of a ``.txt`` list or a COCO ``file_name``
relative to the file that holds it.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from labeler.errors import LabelerError
from labeler.io import prefix_listing, storage
from labeler.io.coco import read_coco
from labeler.io.images import image_extensions

#: URIs per batch read from a ``.txt`` list.
LIST_BATCH = 65_536


@dataclass
class SourceEntries:
    """What a source holds: URI batches in any order, repeats possible (folders and
    lists), or the COCO file's ``image_id``/``uri`` table in id order."""

    kind: str  # folder, list or coco
    uri_batches: Iterator[list[str]] | None = None
    coco_images: pa.Table | None = None


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in image_extensions()


def absolute(uri: str) -> str:
    """A local path made absolute (``file://`` dropped); other URIs as they are."""
    return os.path.abspath(uri.removeprefix("file://")) if storage.is_local(uri) else uri


def _folder_of(source: str) -> str:
    """The folder or prefix that holds the file ``source`` (absolute when local)."""
    return os.path.dirname(absolute(source)) if storage.is_local(source) else posixpath.dirname(source)


def source_root(source: str, image_root: str | None = None) -> str:
    """The root the ``file_name`` of each image of ``source`` is relative to.

    A folder or prefix: itself. A ``.txt`` list: the folder holding it (its
    relative lines are relative to it). A COCO JSON: ``image_root`` if given,
    else the folder holding the JSON, so a COCO source's ``file_name`` is
    kept as it was written. Local roots are absolute, others keep their protocol.
    """
    lowered = source.lower()
    if lowered.endswith(".json"):
        return absolute(image_root).rstrip("/") if image_root else _folder_of(source)
    if lowered.endswith(".txt"):
        return _folder_of(source)
    return absolute(source).rstrip("/") or "/"


def _folder(source: str) -> SourceEntries:
    source = absolute(source)
    fs, root = storage.filesystem(source)
    if not fs.isdir(root):
        raise LabelerError(f"{source}: not a folder, prefix, .txt list or COCO .json")
    if storage.is_local(source):
        return SourceEntries("folder", prefix_listing.iter_local(root, _is_image_name))
    return SourceEntries("folder", prefix_listing.iter_remote(source, _is_image_name))


def _lines(fs: Any, path: str) -> Iterator[str]:
    """The lines of a text file, read as they are consumed."""
    with fs.open(path, "rb") as binary:
        yield from io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape")


def _list_entry(line: str, folder: str, local_list: bool) -> str:
    """The URI a line of a list names; relative lines are relative to the list's folder.

    Local paths are normalised (``a/./b.jpg``, ``/r/../o.jpg``), so two lines
    naming one file are one image and no path climbs out of where it seems to
    be. Object keys are kept as written: ``a//b`` and ``a/b`` are two objects.
    """
    if "://" in line:
        return line
    if os.path.isabs(line):
        return os.path.normpath(line)
    return os.path.normpath(os.path.join(folder, line)) if local_list else f"{folder}/{line}"


def _uri_list(source: str) -> SourceEntries:
    fs, path = storage.filesystem(source)
    if not fs.exists(path):
        raise LabelerError(f"{source}: no such file")
    if not fs.isfile(path):
        raise LabelerError(f"{source}: not a regular file")
    folder = _folder_of(source)

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        try:
            for line in _lines(fs, path):
                uri = line.strip()
                if not uri or uri.startswith("#"):
                    continue
                batch.append(storage.displayable(_list_entry(uri, folder, storage.is_local(source))))
                if len(batch) >= LIST_BATCH:
                    yield batch
                    batch = []
        except storage.storage_errors() as error:
            raise LabelerError(f"{source}: {storage.describe_read_error(error)}") from None
        if batch:
            yield batch

    return SourceEntries("list", batches())


def _coco(source: str, image_root: str | None) -> SourceEntries:
    dataset = read_coco(source)
    root = source_root(source, image_root)
    ids, uris = [], []
    for image in sorted(dataset.images.values(), key=lambda i: i.id):
        ids.append(image.id)
        uris.append(storage.displayable(storage.join_under(root, image.file_name, what=f"{source}: image {image.id}")))
    table = pa.table({"image_id": pa.array(ids, pa.int64()), "uri": pa.array(uris, pa.string())})
    return SourceEntries("coco", coco_images=table)


def read_source(source: str, image_root: str | None = None) -> SourceEntries:
    """Open a source for listing; folders and lists are read as the entries are consumed.

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
