"""Storage access through fsspec: local paths, ``file://``, ``s3://`` and any
other fsspec URI, with one set of helpers."""

from __future__ import annotations

import os
import re
import posixpath
import shutil
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from labeler.errors import LabelerError


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path within it."""
    return url_to_fs(uri, **(storage_options or {}))


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``uri`` names an existing file or folder."""
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Read a whole file; a missing file is a :class:`LabelerError` naming it."""
    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise LabelerError(f"{uri}: no such file") from None
    except IsADirectoryError:
        raise LabelerError(f"{uri}: is a folder, not a file") from None
    except PermissionError:
        raise LabelerError(f"{uri}: permission denied") from None


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``uri`` so that readers never see a half-written file.

    Locally the bytes go to a temporary sibling that is renamed into place;
    object stores publish an object only when its upload completes.
    """
    fs, path = filesystem(uri, storage_options)
    parent = posixpath.dirname(path) if not is_local(uri) else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(uri):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def put_file_atomic(local_path: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Publish a local file at ``uri`` so that readers never see it half-written."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(uri):
        fs.put_file(local_path, path)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staged = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        shutil.copyfile(local_path, staged)
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.remove(staged)


def join_under(root: str, relative: str, *, what: str) -> str:
    """Join ``relative`` (a COCO ``file_name``) under ``root``.

    Absolute names and names whose ``..`` parts climb out of ``root`` are a
    :class:`LabelerError` naming ``what``: a dataset file must not make the
    tool read outside the folder it was pointed at.
    """
    if not relative:
        raise LabelerError(f"{what}: empty file_name")
    if relative.startswith(("/", "\\")) or "://" in relative or re.match(r"^[A-Za-z]:", relative):
        raise LabelerError(f"{what}: file_name {relative!r} is absolute; it must be relative to the image root")
    normalised = posixpath.normpath(relative.replace("\\", "/"))
    if normalised == ".." or normalised.startswith("../"):
        raise LabelerError(f"{what}: file_name {relative!r} escapes the image root")
    return root.rstrip("/") + "/" + normalised
