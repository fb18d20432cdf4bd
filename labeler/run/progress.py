"""Progress of a pipeline: each stage (``labeler run``: read + decode, SAM2, DINOv2, write; ``labeler
rescore``: read, rescoring, write) reports the rows it finished to one small :class:`ProgressTracker` actor (fire and forget: a report costs the stage one
message, never a wait), and a stage that must not go on reports why. The driver's watchdog
(:mod:`labeler.run.watchdog`) reads it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Ray is imported where it is used: the stages run without it too
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

#: Pipeline stages in order (``labeler run``'s, ``labeler rescore``'s), and how they read in messages.
STAGES = ("read", "sam2", "dinov2", "write")
RESCORE_STAGES = ("read", "rescore", "write")
STAGE_NAMES = {"read": "read + decode", "sam2": "SAM2", "dinov2": "DINOv2", "rescore": "rescoring", "write": "write"}


class ProgressTracker:
    """Rows finished per stage, work done inside rows not yet finished (the tiles of a tiled image), and fatal
    reports (a Ray actor; see :func:`start_tracker`)."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.rows = dict.fromkeys(stages, 0)
        self.work = 0
        self.fatal: tuple[str, str] | None = None

    def add(self, stage: str, rows: int) -> None:
        self.rows[stage] += rows

    def add_work(self, units: int) -> None:
        self.work += units

    def report_fatal(self, stage: str, message: str) -> None:
        if self.fatal is None:
            self.fatal = (stage, message)

    def snapshot(self) -> tuple[dict[str, int], tuple[str, str] | None, int]:
        return dict(self.rows), self.fatal, self.work


def start_tracker(stages: tuple[str, ...] = STAGES) -> ActorHandle:
    """A tracker actor for ``stages`` on this (the driver's) node, holding no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()  # if this node dies, so does the driver
    return ray.remote(ProgressTracker).options(
        num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    ).remote(stages)


def report(tracker: ActorHandle | None, stage: str, rows: int) -> None:
    """Tell the tracker a stage finished ``rows`` rows (nothing without a tracker)."""
    if tracker is not None:
        tracker.add.remote(stage, rows)


def report_work(tracker: ActorHandle | None, units: int) -> None:
    """Tell the tracker a stage did ``units`` of work within rows it has not finished (tiles of a tiled image,
    which can keep one batch busy for minutes): the watchdog counts it as progress."""
    if tracker is not None:
        tracker.add_work.remote(units)


def report_fatal(tracker: ActorHandle | None, stage: str, error: BaseException) -> None:
    """Tell the tracker the run must stop because of ``error`` in ``stage``, and wait until it
    knows: the pass may end right after this task fails, and the driver then asks the tracker."""
    if tracker is not None:
        import ray

        delivered = tracker.report_fatal.remote(stage, str(error))
        try:
            if isinstance(delivered, ray.ObjectRef):
                ray.get(delivered, timeout=30)
        except Exception as lost:  # noqa: BLE001 - the run stops anyway; the watchdog names a stall instead
            log.warning("could not report a fatal error to the progress tracker: %s", lost)
