"""Per-image fault isolation in the model stages.

A batch whose model call raises is run again one image at a time, so that
one image that cannot be processed (out of memory on a huge image, a value
the model cannot take) ends as its own error row while the rest of the
batch is labelled. A stage where every image fails is broken, not fed bad
images: after :data:`SYSTEMIC_AFTER` failures in a row it raises
:class:`SystemicFailure`, which stops the run with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

#: Images in a row failing in one actor that make the stage, not the images, the problem.
SYSTEMIC_AFTER = 16
#: Characters of an exception message kept in an error row.
REASON_CHARS = 300

Result = TypeVar("Result")


class SystemicFailure(RuntimeError):
    """A model stage fails on every image: stop the run."""


def is_out_of_memory(error: BaseException) -> bool:
    """A device or host allocation failure (worth one more try with less at once)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


def free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(stage: str, error: BaseException) -> str:
    """A one-line error-row reason: ``SAM2 failed: OutOfMemoryError: ...``."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{stage} failed: {type(error).__name__}" + (f": {message[:REASON_CHARS]}" if message else "")


@dataclass
class FailureStreak:
    """Images failed in a row in one actor; :meth:`record` raises once the streak shows a broken stage."""

    stage: str
    limit: int = SYSTEMIC_AFTER
    length: int = 0

    def record(self, reason: str | None) -> None:
        if reason is None:
            self.length = 0
            return
        self.length += 1
        if self.length >= self.limit:
            raise SystemicFailure(f"{self.length} images in a row failed ({reason})")


def each_image(
    run_batch: Callable[[Sequence[int]], list[Result]],
    run_one: Callable[[int], Result],
    indices: Sequence[int],
    stage: str,
) -> list[Result | str]:
    """``run_batch(indices)``, or if it raises, ``run_one(i)`` for each image alone.

    Returns one entry per index: its result, or the one-line reason it failed
    (a string) when it failed alone too.
    """
    if not len(indices):
        return []
    try:
        return run_batch(indices)
    except Exception as error:  # noqa: BLE001 - any failure of the batch is retried image by image
        log.warning("%s: a batch of %d images failed (%s); retrying them one at a time",
                    stage, len(indices), describe(stage, error))
        if is_out_of_memory(error):
            free_device_memory()
    results: list[Result | str] = []
    for index in indices:
        try:
            results.append(run_one(index))
        except Exception as error:  # noqa: BLE001 - this image's error row
            if is_out_of_memory(error):
                free_device_memory()
            results.append(describe(stage, error))
    return results
