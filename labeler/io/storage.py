"""Storage access through fsspec: local paths, ``file://``, ``s3://`` and any
other fsspec URI, with one set of helpers.

Filesystem options (an S3 endpoint, a profile, ...) come from the standard
places: the AWS variables and credential chain for ``s3://`` (through s3fs
and botocore), fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` variables, and
:func:`configure`, which ``--storage-options`` calls in the driver and in
every Ray worker. They are fsspec's own per-protocol defaults
(``fsspec.config.conf``), so every filesystem this process opens gets them.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import time
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from labeler.errors import LabelerError


def configure(options: dict[str, Any] | None) -> None:
    """Set default filesystem options: ``{"s3": {...}, "gcs": {...}}`` by protocol,
    or a flat dict of options, taken as ``s3``'s.

    Raises:
        LabelerError: options that are not a JSON object of objects.
    """
    if not options:
        return
    if not isinstance(options, dict):
        raise LabelerError("--storage-options must be a JSON object")
    by_protocol = options if all(isinstance(v, dict) for v in options.values()) else {"s3": options}
    for protocol, values in by_protocol.items():
        fsspec.config.conf.setdefault(protocol, {}).update(values)


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """The ``--storage-options`` JSON, checked."""
    if not text:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabelerError(f"--storage-options: malformed JSON: {error}") from None
    if not isinstance(options, dict):
        raise LabelerError("--storage-options must be a JSON object")
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path within it."""
    return url_to_fs(uri)


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str) -> bool:
    """True when ``uri`` names an existing file or folder."""
    fs, path = filesystem(uri)
    return fs.exists(path)


#: Errors a retry cannot fix, and how they read in one line.
PERMANENT_ERRORS = {
    FileNotFoundError: "no such file",
    IsADirectoryError: "is a folder, not a file",
    NotADirectoryError: "a parent is not a folder",
    PermissionError: "permission denied",
}


def describe_read_error(error: Exception) -> str:
    """A one-line reason for a failed read."""
    return PERMANENT_ERRORS.get(type(error)) or f"{type(error).__name__}: {error}"


def read_bytes(uri: str) -> bytes:
    """Read a whole file (transient errors retried); a permanent failure is a
    :class:`LabelerError` naming the file."""
    try:
        return read_bytes_retrying(uri)
    except tuple(PERMANENT_ERRORS) as error:
        raise LabelerError(f"{uri}: {describe_read_error(error)}") from None


def read_bytes_retrying(uri: str, attempts: int = 5, first_delay: float = 0.2) -> bytes:
    """Read a whole file, retrying transient failures (5xx, throttling, timeouts,
    dropped connections) with exponential backoff; permanent ones raise at once.

    This sits on top of botocore's own retries for ``s3://``, for errors that
    outlast them. Local files are read once: their errors do not pass.
    """
    attempts = 1 if is_local(uri) else attempts
    for attempt in range(attempts):
        try:
            fs, path = filesystem(uri)
            with fs.open(path, "rb") as handle:
                return handle.read()
        except tuple(PERMANENT_ERRORS):
            raise
        except Exception:  # noqa: BLE001 - anything else may be transient
            if attempt == attempts - 1:
                raise
            time.sleep(first_delay * 2**attempt)
    raise AssertionError("unreachable")


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers never see a half-written file.

    Locally the bytes go to a temporary sibling that is renamed into place;
    object stores publish an object only when its upload completes.
    """
    fs, path = filesystem(uri)
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


def put_file_atomic(local_path: str, uri: str) -> None:
    """Publish a local file at ``uri`` so that readers never see it half-written."""
    fs, path = filesystem(uri)
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
