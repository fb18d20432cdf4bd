"""Ray's own messages kept out of the user's terminal: in a log file, unless ``--debug``.

Ray prints to the terminal by default: its INFO and WARNING lines (the
token-auth notice, Ray Data's execution plan and block counters), and
whatever its worker processes write (``log_to_driver``), crash dumps of
workers included. A labeler run prints its own progress and summary instead;
Ray's lines go to a file named in the summary. Ray's per-process logs stay
where Ray keeps them (``/tmp/ray/session_*/logs``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

#: Loggers Ray attaches terminal handlers to.
RAY_LOGGERS = ("ray", "ray.data")
HANDLER_NAME = "labeler-ray-log"


def log_folder() -> Path:
    """Where labeler keeps the Ray log of each run: ``$LABELER_LOG_DIR`` or the temporary folder."""
    return Path(os.environ.get("LABELER_LOG_DIR") or Path(tempfile.gettempdir()) / "labeler-logs")


def send_ray_logs_to_file() -> Path:
    """Replace the terminal handlers of Ray's loggers with one file; returns the file's path."""
    import ray.data  # noqa: F401 - Ray Data attaches its handlers when imported

    folder = log_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(HANDLER_NAME)
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if _to_terminal(h) or h.get_name() == HANDLER_NAME]:
            logger.removeHandler(old)
            if old.get_name() == HANDLER_NAME:
                old.close()
        logger.addHandler(handler)
    return path


def _to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and getattr(stream, "name", "") in ("<stderr>", "<stdout>")
