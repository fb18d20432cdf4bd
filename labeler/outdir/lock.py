"""One run at a time on an output folder, on local disks and object stores alike.

The lock lives in ``OUT/_state/lock/`` and uses only what every store does
with strong consistency: write an object whole, list a folder, delete an
object (local disks, S3, GCS and Azure all qualify).

Acquiring:
1. write a claim ``<claim id>.json`` naming this process;
2. list the claims; drop the stale ones (below);
3. the lock is ours when ours is the only live claim. Otherwise ours is
   deleted: another run holds OUT (refused, naming it), or several runs
   claimed at the same moment (each backs off for a random moment and tries
   again, a few times).

Never two holders: a holder's claim existed before it listed, so any later
claimant lists after writing its own claim, sees the holder's and backs
off; two claimants that overlap see each other and both back off.

Stale claims: the holder rewrites its claim every ``heartbeat`` seconds. A
claim is stale when it names a process on this machine that no longer runs
(a run killed with SIGKILL frees OUT at once), or when it was last written
more than ``stale_after`` seconds before the newest write of our own claim:
both times come from the store's clock, so clock skew between machines does
not matter. If a holder's own claim disappears (another run judged it
stale), :meth:`OutputLock.check` raises before the run writes its final files.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.outdir import layout as out_folder

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0
CONTENTION_RETRIES = 5


class OutputLockedError(LabelerError):
    """Another run holds the output folder."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ('' where /proc is missing).

    With the boot id it tells a live process from a later one that reuses its pid.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def _process_is_running(pid: int, start: str) -> bool:
    if start:
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """One claim file as listed: who wrote it and when the store last saw it written."""

    name: str
    owner: dict[str, Any]
    written: datetime

    def describe(self) -> str:
        owner = self.owner
        return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}, "
                f"last heartbeat {self.written.isoformat(timespec='seconds')}")


class OutputLock:
    """The lock of one output folder; use :meth:`acquire`, then :meth:`release`."""

    def __init__(self, out: str, *, heartbeat: float = HEARTBEAT_SECONDS, stale_after: float = STALE_AFTER_SECONDS):
        self.out = out.rstrip("/")
        self.folder = out_folder.join(self.out, out_folder.STATE_DIR, out_folder.LOCK_NAME)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.claim_id = uuid.uuid4().hex
        self.owner = {
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def claim_uri(self) -> str:
        return f"{self.folder}/{self.claim_id}{out_folder.CLAIM_SUFFIX}"

    def _write_claim(self, held: bool) -> None:
        storage.write_bytes_atomic(self.claim_uri, json.dumps(dict(self.owner, held=held)).encode())

    def _claims(self) -> list[Claim]:
        fs, path = storage.filesystem(self.folder)
        claims = []
        fs.invalidate_cache(path)  # another process's claims are never in this one's listing cache
        for entry in fs.ls(path, detail=False, refresh=True) if fs.exists(path) else []:
            name = posixpath.basename(entry.rstrip("/"))
            if not name.endswith(out_folder.CLAIM_SUFFIX) or ".tmp-" in name:
                continue
            try:
                with fs.open(entry, "rb") as handle:
                    owner = json.loads(handle.read())
                written = fs.modified(entry)
            except (FileNotFoundError, ValueError):
                continue  # released or half-visible meanwhile
            claims.append(Claim(name, owner if isinstance(owner, dict) else {}, written))
        return claims

    def _is_stale(self, claim: Claim, now: datetime) -> bool:
        owner = claim.owner
        same_machine = owner.get("host") == self.owner["host"] and owner.get("boot_id") == self.owner["boot_id"]
        if same_machine and isinstance(owner.get("pid"), int):
            return not _process_is_running(owner["pid"], str(owner.get("pid_start", "")))
        return (now - claim.written).total_seconds() > self.stale_after

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`OutputLockedError` naming the run that holds it."""
        for attempt in range(CONTENTION_RETRIES):
            self._write_claim(held=False)
            claims = self._claims()
            mine = next((c for c in claims if c.name == self.claim_id + out_folder.CLAIM_SUFFIX), None)
            if mine is None:
                raise LabelerError(f"{self.out}: the lock claim just written is not listed; is OUT writable?")
            others = []
            for claim in claims:
                if claim is mine:
                    continue
                if self._is_stale(claim, mine.written):
                    log.warning("%s: removing the stale lock of a run that is gone (%s)", self.out, claim.describe())
                    storage.remove(f"{self.folder}/{claim.name}")
                else:
                    others.append(claim)
            if not others:
                self._write_claim(held=True)
                self._thread = threading.Thread(target=self._beat, name="labeler-out-lock", daemon=True)
                self._thread.start()
                return self
            storage.remove(f"{self.folder}/{self.claim_id + out_folder.CLAIM_SUFFIX}")
            holder = next((c for c in others if c.owner.get("held")), None)
            if holder is not None:
                raise OutputLockedError(
                    f"{self.out} is in use by another labeler run ({holder.describe()}); wait for it to finish, "
                    f"or, if that run is gone, rerun after its lock goes stale ({self.stale_after:.0f} s after its "
                    "last heartbeat; at once on the same machine)"
                )
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
        raise OutputLockedError(f"{self.out}: other runs keep claiming this folder at the same moment; try again")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._claim_exists():
                    self._lost = True
                    log.error("%s: this run's lock was taken over by another run", self.out)
                    return
                self._write_claim(held=True)
            except Exception as error:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("%s: lock heartbeat failed (%s); retrying", self.out, error)

    def _claim_exists(self) -> bool:
        fs, path = storage.filesystem(self.claim_uri)
        fs.invalidate_cache(path)
        return fs.exists(path)

    def check(self) -> None:
        """Raise if another run took this run's lock over (it judged the lock stale)."""
        if self._lost or not self._claim_exists():
            self._lost = True
            raise OutputLockedError(
                f"{self.out}: another run took this folder over while this one ran (its heartbeat was more than "
                f"{self.stale_after:.0f} s late); finished shards are kept; rerun when the other run is done"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the claim (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat + 5)
            self._thread = None
        if not self._lost:
            storage.remove(f"{self.folder}/{self.claim_id + out_folder.CLAIM_SUFFIX}")

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
