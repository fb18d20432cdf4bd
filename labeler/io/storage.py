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

import contextlib
import json
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

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


def displayable(name: str) -> str:
    """``name`` as valid Unicode, for a listing (Parquet and JSON hold only valid UTF-8).

    A local name whose bytes are not UTF-8 (Latin-1 names on old shares) comes
    from the OS with surrogate escapes; its undecodable bytes become ``\\xe9``.
    A lone surrogate (a COCO ``file_name`` written as ``"\\ud800"``) becomes
    ``\\ud800``. Such a name names no file as it is: the image is an error row
    (:func:`undecodable_name_reason`). Valid names are returned unchanged.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")
_ESCAPED_SURROGATE = re.compile(r"\\ud[89a-f][0-9a-f]{2}")


def undecodable_name_reason(uri: str) -> str | None:
    """Why a local image that could not be opened has no usable name, or None.

    True for names :func:`displayable` escaped: the file whose bytes they
    stand for exists, or the name held a lone surrogate.
    """
    if not is_local(uri):
        return None
    if _ESCAPED_SURROGATE.search(uri):
        return "its file name is not valid Unicode (a lone surrogate); fix the name in the source"
    raw = uri.removeprefix("file://").encode("utf-8")
    if _ESCAPED_BYTE.search(raw) and os.path.lexists(_ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), raw)):
        return "its file name is not valid UTF-8; rename the file (e.g. convmv -f latin1 -t utf8)"
    return None


class ReadRefusedError(Exception):
    """A file labeler will not read: not a regular file, too large, or failing a header check."""


#: Errors a retry cannot fix, and how they read in one line.
PERMANENT_ERRORS = {
    FileNotFoundError: "no such file",
    IsADirectoryError: "is a folder, not a file",
    NotADirectoryError: "a parent is not a folder",
    PermissionError: "permission denied",
}


def describe_read_error(error: BaseException) -> str:
    """A one-line reason for a failed read."""
    if isinstance(error, ReadRefusedError):
        return str(error)
    return PERMANENT_ERRORS.get(type(error)) or f"{type(error).__name__}: {error}"


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Errors of a store that cannot be reached at all; its client has retried them already."""
    try:
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError
    except ImportError:
        return ()
    return EndpointConnectionError, NoCredentialsError


def storage_errors() -> tuple[type[BaseException], ...]:
    """What storage clients raise for failures of the storage itself (not bugs):
    OS errors and the object-store clients' own error types."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        errors.append(HttpClientError)
    except ImportError:
        pass
    return tuple(errors)


def describe_storage_error(error: BaseException) -> str:
    """A one-line description of a storage failure."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


#: Size limit of the files read whole besides images (datasets, banks, checkpoints).
MAX_FILE_BYTES = 1 << 36


def read_bytes(uri: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole regular file (transient errors retried); a permanent failure is a
    :class:`LabelerError` naming the file."""
    try:
        return read_bytes_retrying(uri, max_bytes=max_bytes)
    except (*PERMANENT_ERRORS, ReadRefusedError) as error:
        raise LabelerError(f"{uri}: {describe_read_error(error)}") from None


def read_bytes_retrying(
    uri: str,
    attempts: int = 5,
    first_delay: float = 0.2,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    check_header: Callable[[bytes], None] | None = None,
) -> bytes:
    """Read a whole file, retrying transient failures (5xx, throttling, timeouts,
    dropped connections) with exponential backoff; permanent ones raise at once.

    The read is bounded (:func:`read_bounded`). This sits on top of botocore's
    own retries for ``s3://``, for errors that outlast them.
    Local files are read once: their errors do not pass.
    """
    attempts = 1 if is_local(uri) else attempts
    for attempt in range(attempts):
        try:
            return read_bounded(uri, max_bytes, check_header)
        except (*PERMANENT_ERRORS, ReadRefusedError, *_unreachable_errors()):
            raise
        except Exception:  # noqa: BLE001 - anything else may be transient
            if attempt == attempts - 1:
                raise
            time.sleep(first_delay * 2**attempt)
    raise AssertionError("unreachable")


#: Bytes read first, for a header check, before the rest of a file.
HEADER_BYTES = 64


def read_bounded(uri: str, max_bytes: int, check_header: Callable[[bytes], None] | None = None) -> bytes:
    """Read a regular file of at most ``max_bytes``, checking its header before the rest.

    A local path is opened without blocking and checked on the open handle, so
    a FIFO, socket or device named like an image is refused instead of read
    (a FIFO would block forever); a size above ``max_bytes`` is refused before
    any byte is read (on object stores from the listed size), and a file that
    grows while it is read is refused too. ``check_header`` gets the first
    :data:`HEADER_BYTES` and raises to refuse the file before the rest is read.

    Raises:
        ReadRefusedError: not a regular file, or too large.
        FileNotFoundError, PermissionError, IsADirectoryError: as the store reports them.
    """
    if is_local(uri):
        path = uri.removeprefix("file://")
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            status = os.fstat(descriptor)
            if stat.S_ISDIR(status.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(status.st_mode):
                raise ReadRefusedError("not a regular file (a FIFO, socket or device)")
            os.set_blocking(descriptor, True)
            handle = os.fdopen(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise
        size = status.st_size
    else:
        fs, path = filesystem(uri)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise IsADirectoryError(path)
        size = int(info["size"]) if info.get("size") is not None else None
        handle = fs.open(path, "rb")
    with handle:
        if size is not None:
            _check_size(size, max_bytes)
        if check_header is not None:
            check_header(handle.read(HEADER_BYTES))
            handle.seek(0)
        data = handle.read(size + 1) if size is not None else _read_up_to(handle, max_bytes + 1)
    _check_size(len(data), max_bytes)
    if size is not None and len(data) > size:
        raise ReadRefusedError("the file grew while it was read")
    return data


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ReadRefusedError(f"{size} bytes is more than the read limit of {max_bytes} bytes")


def _read_up_to(handle: Any, limit: int, chunk: int = 1 << 24) -> bytes:
    """Read until the end or ``limit`` bytes, without allocating ``limit`` up front."""
    parts, total = [], 0
    while total < limit:
        part = handle.read(min(chunk, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


@contextlib.contextmanager
def open_atomic(uri: str) -> Iterator[BinaryIO]:
    """A binary handle whose content appears at ``uri`` whole, when the block exits
    without an exception, and not at all otherwise.

    Locally the bytes go to a temporary sibling ``<name>.tmp-<hex>``, synced and
    renamed into place (a kill leaves only the temporary, which the next run
    deletes); object stores publish an object only when its upload completes,
    and a failed upload is discarded.
    """
    fs, path = filesystem(uri)
    if not is_local(uri):
        handle = fs.open(path, "wb")
        try:
            yield handle
        except BaseException:
            handle.discard()
            raise
        handle.close()
        return
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove(uri: str, recursive: bool = False) -> None:
    """Delete ``uri`` (a folder's contents too with ``recursive``); nothing there is not an error."""
    fs, path = filesystem(uri)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers never see a half-written file (:func:`open_atomic`)."""
    if not is_local(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)  # one PUT: published whole or not at all
        return
    with open_atomic(uri) as handle:
        handle.write(data)


def _check_writable(path: str, option: str, uri: str) -> None:
    """``path`` exists as a writable folder or could be created as one."""
    ancestor = os.path.abspath(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise LabelerError(f"{option} {uri}: {ancestor} is a file, not a folder")
    if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
        raise LabelerError(f"{option} {uri}: {ancestor} is on a Read-only file system")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LabelerError(f"{option} {uri}: no permission to write in {ancestor}")


def check_output_folder(uri: str, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is an existing file or cannot be created."""
    fs, path = filesystem(uri)
    if fs.isfile(path):
        raise LabelerError(f"{option} {uri} is a file; pass a folder")
    if is_local(uri):
        _check_writable(path, option, uri)


#: Bytes at the head of an existing output file searched for the marker of the command that writes it.
MARKER_SEARCH_BYTES = 1 << 16


def check_output_file(uri: str, option: str = "--out", marker: bytes | None = None) -> None:
    """Refuse, before any work, an output file that is an existing folder, whose folder cannot
    be made, or, with ``marker``, an existing file that does not carry it near its start (a
    file this command did not write, which it must not replace)."""
    fs, path = filesystem(uri)
    if fs.isdir(path):
        raise LabelerError(f"{option} {uri} is a folder; pass a file name")
    if is_local(uri):
        _check_writable(os.path.dirname(os.path.abspath(path)), option, uri)
    if marker is not None and fs.isfile(path):
        with fs.open(path, "rb") as handle:
            head = handle.read(MARKER_SEARCH_BYTES)
        if marker not in head:
            raise LabelerError(f"{option} {uri} exists and this command did not write it; labeler replaces only "
                               "its own files: pass a new name")


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
