"""Listing every file under a folder or object-store prefix, page by page.

Nothing here holds more than a page or two of names: a prefix of ten
million objects streams through in batches. Local folders are walked with
``os.walk``; ``s3://`` prefixes are listed in parallel, one listing per
common prefix (sub-folder) of the root, concurrently on s3fs's event loop;
other fsspec stores are walked folder by folder with ``fs.walk``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fsspec.asyn import sync

from labeler.io import storage
from labeler.io.published_folder import MARKER_NAME
from labeler.outdir import layout as out_folder

#: Names per yielded batch.
BATCH_NAMES = 65_536
#: Listings of an ``s3://`` prefix in flight at once.
S3_CONCURRENCY = 32


def is_labeler_folder(folder: str, dirnames: list[str], filenames: list[str]) -> bool:
    """True for a folder labeler wrote (a run's OUT, an export, pictures): never a source's images."""
    return MARKER_NAME in filenames or (out_folder.STATE_DIR in dirnames and os.path.isfile(
        os.path.join(folder, out_folder.STATE_DIR, out_folder.SETTINGS_NAME)))


def iter_local(root: str, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """Paths under a local folder whose name passes ``keep``, links included as they are.

    Broken links, symlink loops and folders named like images are listed too
    (they end as error rows with their reason); symlinked folders are not
    followed (no cycles). Folders below ``root`` that labeler wrote (a run's
    OUT, an export, pictures) are skipped: what labeler wrote is not to be
    labelled. Names that are not valid UTF-8 are listed escaped
    (:func:`labeler.io.storage.displayable`) and end as error rows.
    """
    batch: list[str] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        if folder != root and is_labeler_folder(folder, dirnames, filenames):
            dirnames[:] = []
            continue
        batch += [storage.displayable(os.path.join(folder, name)) for name in dirnames + filenames if keep(name)]
        if len(batch) >= BATCH_NAMES:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_remote(uri: str, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """URIs (with their protocol) of the files under a remote prefix whose name passes ``keep``."""
    fs, root = storage.filesystem(uri)
    if _is_s3(fs):
        yield from _iter_s3(fs, root, keep)
        return
    for folder, _, files in fs.walk(root, detail=False):
        names = [fs.unstrip_protocol(f"{folder.rstrip('/')}/{name}") for name in files if keep(name)]
        if names:
            yield names


def _is_s3(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "s3" in protocols and hasattr(fs, "_iterdir")


def _iter_s3(fs: Any, root: str, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """Pages of an S3 prefix, listed per common prefix of ``root`` in parallel
    (a prefix without sub-prefixes is one listing: S3 pages it one after the other).

    The listings run on s3fs's own event loop (its paged ``_iterdir``, each
    page retried by s3fs) and hand their names over through a bounded queue,
    so a slow consumer slows the listing down instead of growing memory.
    """
    bucket, _, prefix = root.strip("/").partition("/")
    prefix = f"{prefix}/" if prefix else ""
    pages: queue.Queue = queue.Queue(maxsize=8)
    done = object()

    def hand_over(item: Any) -> None:
        pages.put(item)

    async def list_all() -> None:
        limit = asyncio.Semaphore(S3_CONCURRENCY)
        loop = asyncio.get_running_loop()

        async def send(names: list[str]) -> None:
            await loop.run_in_executor(None, hand_over, names)

        async def list_under(sub_prefix: str) -> None:
            async with limit:
                names: list[str] = []
                async for info in fs._iterdir(bucket, prefix=sub_prefix, delimiter=""):
                    if info["type"] == "file" and keep(info["name"].rsplit("/", 1)[-1]):
                        names.append(f"s3://{info['name']}")
                    if len(names) >= BATCH_NAMES:
                        await send(names)
                        names = []
                if names:
                    await send(names)

        top: list[str] = []
        sub_prefixes = []
        async for info in fs._iterdir(bucket, prefix=prefix, delimiter="/"):
            if info["type"] == "directory":
                sub_prefixes.append(info["name"].removeprefix(f"{bucket}/") + "/")
            elif keep(info["name"].rsplit("/", 1)[-1]):
                top.append(f"s3://{info['name']}")
                if len(top) >= BATCH_NAMES:
                    await send(top)
                    top = []
        if top:
            await send(top)
        await asyncio.gather(*(list_under(sub) for sub in sub_prefixes))

    def produce() -> None:
        try:
            sync(fs.loop, list_all)
            pages.put(done)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            pages.put(error)

    thread = threading.Thread(target=produce, name="s3-listing", daemon=True)
    thread.start()
    while (item := pages.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()

