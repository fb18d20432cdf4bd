"""What both model stages (SAM2 proposals, DINOv2 scoring) share: the worker's set-up, the shared compile cache,
per-image isolation counted in a failure streak, and progress and systemic failures reported to the run's
tracker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from labeler.actors.isolation import FailureStreak, SystemicFailure, each_image
from labeler.devices import resolve_device
from labeler.io import storage
from labeler.models.compile_cache import CompileCache
from labeler.models.speedups import Speedups
from labeler.run.progress import STAGE_NAMES, report, report_fatal

if TYPE_CHECKING:
    from ray.actor import ActorHandle

Result = TypeVar("Result")


class ModelStage:
    """Base of the model-stage actors: a subclass sets :attr:`stage` and implements :meth:`label`."""

    #: The stage's name in the progress tracker (:data:`labeler.run.progress.STAGES`).
    stage: str

    def __init__(self, device: str, dtype: str, compile: bool, cpu_threads: int | None,
                 storage_options: dict | None, tracker: ActorHandle | None, compile_cache: str | None = None):
        """Apply the run's storage options, cap torch's CPU threads, resolve the device and the speed-ups.
        ``compile_cache`` is the folder of the compile caches shared by the run's actors (with ``compile``)."""
        storage.configure(storage_options)
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.tracker = tracker
        self.failures = FailureStreak(STAGE_NAMES[self.stage])
        self.device = resolve_device(device)
        self.speedups = Speedups.resolve(dtype, compile, self.device)
        self._compile_cache_folder = compile_cache if self.speedups.compile else None
        self.compile_cache: CompileCache | None = None

    def load_compile_cache(self, settings: dict[str, Any]) -> None:
        """Before compiling: load the stage's shared compile cache for these model ``settings``, if saved
        (:mod:`labeler.models.compile_cache`)."""
        if self._compile_cache_folder:
            settings = {**settings, "dtype": self.speedups.dtype}
            self.compile_cache = CompileCache(self._compile_cache_folder, self.stage, settings, self.device)
            self.compile_cache.load()

    def save_compile_cache(self) -> None:
        """After a batch: save what this actor compiled, if no other actor saved it first."""
        if self.compile_cache is not None:
            self.compile_cache.save()

    def label(self, batch: dict[str, np.ndarray]) -> Any:
        """The stage's work on one batch (the batch's rows out, one per row in)."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        """:meth:`label`, its rows reported; a systemic failure is reported to the run before the batch fails."""
        try:
            output = self.label(batch)
        except SystemicFailure as failure:
            report_fatal(self.tracker, self.stage, failure)
            raise
        report(self.tracker, self.stage, len(batch["image_id"]))
        self.save_compile_cache()
        return output

    def each_image(self, run_batch: Callable[[Sequence[int]], list[Result]], run_one: Callable[[int], Result],
                   rows: Sequence[int]) -> list[Result | str]:
        """:func:`labeler.actors.isolation.each_image`, each outcome counted in the failure streak."""
        outcomes = each_image(run_batch, run_one, rows, STAGE_NAMES[self.stage])
        for outcome in outcomes:
            self.failures.record(outcome if isinstance(outcome, str) else None)
        return outcomes
