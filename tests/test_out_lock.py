"""The output-folder lock: one holder at a time on local disks and on S3, stale locks recovered."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from s3fs import S3FileSystem

from labeler.io import storage
from labeler.outdir.lock import OutputLock, OutputLockedError

from .s3_endpoint import S3Endpoint

LOCK_DIR = "_state/lock"  # where OUT keeps its lock claims


def test_a_second_lock_is_refused_naming_the_holder_then_granted_after_release(tmp_path):
    out = str(tmp_path / "out")
    first = OutputLock(out).acquire()
    with pytest.raises(OutputLockedError, match=rf"in use by another labeler run \(pid {os.getpid()} on "):
        OutputLock(out).acquire()
    first.release()
    second = OutputLock(out).acquire()
    second.release()
    assert os.listdir(tmp_path / "out" / LOCK_DIR) == []


def test_racing_claimants_never_hold_the_lock_together(tmp_path):
    out = str(tmp_path / "out")
    holders, overlaps, granted = [0], [0], [0]
    guard = threading.Lock()

    def contend() -> None:
        for _ in range(6):
            lock = OutputLock(out)
            try:
                lock.acquire()
            except OutputLockedError:
                continue
            with guard:
                holders[0] += 1
                granted[0] += 1
                overlaps[0] += holders[0] > 1
            time.sleep(0.01)
            with guard:
                holders[0] -= 1
            lock.release()

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 0 and granted[0] >= 1


HOLD_AND_WAIT = """
import sys, time
from labeler.outdir.lock import OutputLock
OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_on_this_machine_is_taken_at_once(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, out], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLockedError):
        OutputLock(out).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    OutputLock(out).acquire().release()
    assert time.monotonic() - started < 5


def test_a_lock_from_another_machine_goes_stale_after_its_heartbeat_stops(tmp_path):
    out = str(tmp_path / "out")
    claim = tmp_path / "out" / LOCK_DIR / f"{'a' * 32}.json"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": "gpu-node-7", "boot_id": "other", "pid": 1, "held": True}))
    with pytest.raises(OutputLockedError, match="gpu-node-7"):
        OutputLock(out, stale_after=60).acquire()
    two_minutes_ago = time.time() - 120
    os.utime(claim, (two_minutes_ago, two_minutes_ago))
    OutputLock(out, stale_after=60).acquire().release()
    assert not claim.exists()


def test_a_holder_whose_claim_was_taken_over_notices_before_writing_its_results(tmp_path):
    out = str(tmp_path / "out")
    lock = OutputLock(out, heartbeat=0.05).acquire()
    lock.check()
    os.remove(storage.filesystem(lock.claim_uri)[1])
    with pytest.raises(OutputLockedError, match="took this folder over"):
        lock.check()
    lock.release()


def test_the_heartbeat_rewrites_the_claim(tmp_path):
    out = str(tmp_path / "out")
    lock = OutputLock(out, heartbeat=0.05).acquire()
    path = storage.filesystem(lock.claim_uri)[1]
    first = os.stat(path).st_mtime_ns
    deadline = time.monotonic() + 5
    while os.stat(path).st_mtime_ns == first and time.monotonic() < deadline:
        time.sleep(0.02)
    lock.release()
    assert time.monotonic() < deadline


@pytest.fixture(scope="module")
def s3_out():
    endpoint = S3Endpoint().start()
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ENDPOINT_URL": endpoint.direct, "AWS_ACCESS_KEY_ID": "labeler-test",
                       "AWS_SECRET_ACCESS_KEY": "lock-test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        patch.setenv(key, value)
    fsspec.config.conf.pop("s3", None)
    S3FileSystem.clear_instance_cache()
    fs, _ = storage.filesystem("s3://locks")
    fs.mkdir("locks")
    yield "s3://locks/run-out"
    patch.undo()
    endpoint.stop()
    S3FileSystem.clear_instance_cache()  # fsspec caches filesystems: none may outlive this endpoint


def test_the_lock_works_on_an_object_store(s3_out):
    first = OutputLock(s3_out).acquire()
    with pytest.raises(OutputLockedError, match="in use by another labeler run"):
        OutputLock(s3_out).acquire()
    first.release()
    OutputLock(s3_out).acquire().release()
    fs, path = storage.filesystem(f"{s3_out}/{LOCK_DIR}")
    fs.invalidate_cache()
    assert not fs.exists(path) or fs.ls(path, refresh=True) == []
