"""A real Label Studio server on 127.0.0.1 for the review-loop test.

Label Studio (``label-studio`` from PyPI, pinned) gets an environment of its
own, made with ``uv`` (it pins a Django and an SDK the test environment must
not share) and kept under ``.cache/`` for the next run. Its first start runs
the database migrations (about 90 s on 2 cores), so the conftest starts it in
the background as soon as a collected test needs it (:func:`start_in_background`)
and moves those tests to the end of the session: the rest of the suite runs
meanwhile. It never reaches another host (its version check and analytics are
off), and it is stopped when the session ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

LABEL_STUDIO_VERSION = "1.23.2"
ENVIRONMENT = Path(__file__).resolve().parents[1] / ".cache" / f"label-studio-{LABEL_STUDIO_VERSION}"

TOKEN = "labeler0test0token0123456789abcdef"
START_SECONDS = 600  # a fresh database runs its migrations first: about 90 s on 2 cores


def label_studio_environment() -> Path:
    """The ``label-studio`` executable of the pinned environment, made once (under a lock) with uv."""
    executable = ENVIRONMENT / "bin" / "label-studio"
    ENVIRONMENT.parent.mkdir(parents=True, exist_ok=True)
    with open(ENVIRONMENT.parent / "label-studio.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (ENVIRONMENT / ".ready").exists():
            shutil.rmtree(ENVIRONMENT, ignore_errors=True)
            uv = [sys.executable, "-m", "uv"]
            subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(ENVIRONMENT)], check=True)
            subprocess.run([*uv, "pip", "install", "-q", "--python", str(ENVIRONMENT / "bin" / "python"),
                            f"label-studio=={LABEL_STUDIO_VERSION}"], check=True)
            (ENVIRONMENT / ".ready").touch()
    return executable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelStudio:
    """A Label Studio server and its HTTP API (legacy token authentication); files under
    ``document_root`` are served as Label Studio's local files."""

    def __init__(self, data: Path, document_root: Path):
        self.document_root = document_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LATEST_VERSION_CHECK": "false",
               "COLLECT_ANALYTICS": "false", "CONVERTER_DOWNLOAD_RESOURCES": "false",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
        self.log = open(data / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(label_studio_environment()), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p",
             str(self.port), "--data-dir", str(data), "--username", "reviewer@example.com", "--password",
             "reviewer-password", "--user-token", TOKEN, "--enable-legacy-api-token"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < START_SECONDS:
            assert self.process.poll() is None, (Path(self.log.name).read_text()[-3000:])
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(f"Label Studio did not answer within {START_SECONDS} s")

    def call(self, method: str, path: str, body: object = None) -> object:
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:500]!r}") from None
        return json.loads(data) if data.strip()[:1] in (b"{", b"[") else data

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


class Launcher:
    """Makes the environment and starts the server on a thread; :meth:`server` waits for it."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="labeler-label-studio-"))
        self._server: LabelStudio | None = None
        self._error: BaseException | None = None
        self._started = 0.0
        self._thread = threading.Thread(target=self._start, name="label-studio", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        self._started = time.monotonic()
        try:
            (self.folder / "data").mkdir()
            (self.folder / "files").mkdir()
            self._server = LabelStudio(self.folder / "data", self.folder / "files")
            self._server.wait()
        except BaseException as error:  # noqa: BLE001 - raised in the test that waits for it
            self._error = error

    def server(self) -> LabelStudio:
        self._thread.join()
        if self._error is not None:
            raise self._error
        print(f"Label Studio {LABEL_STUDIO_VERSION} answered {time.monotonic() - self._started:.0f} s after its start")
        return self._server

    def stop(self) -> None:
        self._thread.join()
        if self._server is not None:
            self._server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


_launcher: Launcher | None = None


def start_in_background() -> None:
    """Start the server now (once per session), for a test that asks for it later."""
    global _launcher
    if _launcher is None:
        _launcher = Launcher()


def running_server() -> LabelStudio:
    """The server :func:`start_in_background` started (starting it now if it did not)."""
    start_in_background()
    return _launcher.server()


def stop() -> None:
    """Stop the server, if one was started."""
    global _launcher
    if _launcher is not None:
        _launcher.stop()
        _launcher = None
