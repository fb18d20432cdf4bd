"""The watchdog that stops a run which makes no progress (docs/cluster.md).

:class:`Watchdog` reads the progress tracker's counts (:mod:`labeler.run.progress`) every few seconds
and stops the pipeline when a stage reported an error it must not survive (at once, with its reason);
when the pass lost a model actor and nothing moved for ``replan_after`` seconds (:class:`PassAbandoned`:
the run plans a new pass on what the cluster has now; a node lost with only tasks is no loss, Ray
reruns them); and when nothing moved for ``stall_timeout`` seconds, naming the stage that holds the work
and how many of its actors are alive.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labeler.run.progress import STAGE_NAMES, STAGES

if TYPE_CHECKING:
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

DEFAULT_STALL_TIMEOUT = 900.0
#: Seconds without progress after a loss of capacity before a pass is planned anew.
DEFAULT_REPLAN_AFTER = 30.0
POLL_SECONDS = 5.0


class PipelineStopped(Exception):
    """Raised in the thread running the pipeline when the watchdog stops the run."""


class PassAbandoned(PipelineStopped):
    """Raised in the thread running the pipeline when the pass lost capacity and stopped moving."""


def stalled_stage(rows: dict[str, int], total: int, rows_per_shard: int, stages: tuple[str, ...] = STAGES) -> str:
    """The stage holding the work: furthest downstream with rows waiting for it.

    The writer (the last stage) waits for ``rows_per_shard`` rows before it
    writes, so fewer rows waiting there are not a stall of its own.
    """
    upstream = total
    waiting = {}
    for stage in stages:
        waiting[stage] = upstream - rows[stage]
        upstream = rows[stage]
    writer = stages[-1]
    if waiting[writer] >= rows_per_shard:
        return writer
    upstream_waiting = [s for s in stages[:-1] if waiting[s] > 0]
    if upstream_waiting:
        return upstream_waiting[-1]
    return writer if waiting[writer] else stages[0]


def actor_states(class_name: str) -> dict[str, str]:
    """Actor id -> state of the actors whose class name holds ``class_name`` in Ray's actor table
    (the GCS: no dashboard needed); Ray Data's workers carry their callable class's name in theirs."""
    from ray._private.state import actors

    return {actor_id: a["State"] for actor_id, a in actors().items() if class_name in a.get("ActorClassName", "")}


@dataclass
class Watchdog:
    """Watches a tracker from a driver thread and stops the pipeline (module doc).

    Use as a context manager around the pipeline, in the thread that runs it:
    that thread gets :class:`PipelineStopped` or :class:`PassAbandoned`, and
    :attr:`reason` says why.
    """

    tracker: ActorHandle
    actor_classes: dict[str, str]  # model stage -> the class name of its actors (labeler.run.pipeline)
    total: int
    rows_per_shard: int
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    replan_after: float = DEFAULT_REPLAN_AFTER
    poll_seconds: float = POLL_SECONDS
    on_progress: Callable[[dict[str, int]], None] | None = None  # called with the rows per stage at each poll
    stages: tuple[str, ...] = STAGES  # the tracker's stages, in order
    reason: str | None = None
    rows: dict[str, int] = field(default_factory=dict)
    work: int = 0  # units of work inside unfinished rows (labeler.run.progress.report_work)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _pipeline_thread: int = 0
    _earlier_actors: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rows = self.rows or dict.fromkeys(self.stages, 0)

    def __enter__(self) -> Watchdog:
        self._pipeline_thread = threading.get_ident()
        self._earlier_actors = set(self.model_actors())
        self._thread = threading.Thread(target=self._watch, name="labeler-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        with self._lock:  # from here on the watchdog never interrupts: the pipeline is over
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 30)
        if exc_type is None:  # a pass can end before the next poll: a stage's fatal report still stops the run
            import ray

            _, fatal, _ = ray.get(self.tracker.snapshot.remote(), timeout=30)
            if fatal is not None:
                self.reason = f"the {STAGE_NAMES[fatal[0]]} stage failed: {fatal[1]}"
                raise PipelineStopped(self.reason)

    def _watch(self) -> None:
        import ray

        last_change = time.monotonic()
        while not self._stop.wait(self.poll_seconds):
            try:
                rows, fatal, work = ray.get(self.tracker.snapshot.remote(), timeout=max(30.0, self.poll_seconds))
            except Exception as error:  # noqa: BLE001 - progress that cannot be seen counts as none
                log.warning("progress tracker unavailable: %s", error)
                rows, fatal, work = self.rows, None, self.work
            if self.on_progress is not None:
                self.on_progress(rows)
            if fatal is not None:
                stage, message = fatal
                self._interrupt(f"the {STAGE_NAMES[stage]} stage failed: {message}", PipelineStopped)
                return
            if rows != self.rows or work != self.work:
                self.rows, self.work, last_change = rows, work, time.monotonic()
                continue
            log.debug("no progress for %.0f s (rows %s)", time.monotonic() - last_change, rows)
            idle = time.monotonic() - last_change
            if idle >= self.stall_timeout:
                self._interrupt(self.describe_stall(), PipelineStopped)
                return
            lost = self.lost_capacity() if idle >= self.replan_after else None
            if lost:
                self._interrupt(f"{lost} and nothing moved for {idle:.0f} s", PassAbandoned)
                return

    def model_actors(self) -> dict[str, str]:
        """Actor id -> state of every model-stage actor."""
        return {actor_id: state for name in self.actor_classes.values() for actor_id, state in actor_states(name).items()}

    def lost_capacity(self) -> str | None:
        """What this pass lost since it started: model actors that died (with their node or alone)."""
        died = [i for i, state in self.model_actors().items() if state == "DEAD" and i not in self._earlier_actors]
        return f"{len(died)} model actor(s) died" if died else None

    def describe_stall(self) -> str:
        stage = stalled_stage(self.rows, self.total, self.rows_per_shard, self.stages)
        done = ", ".join(f"{STAGE_NAMES[s]} {self.rows[s]}" for s in self.stages)
        line = f"no progress for {self.stall_timeout:g} s: the {STAGE_NAMES[stage]} stage stalled (rows done: {done}"
        if stage in self.actor_classes:
            states = [state for state in actor_states(self.actor_classes[stage]).values() if state != "DEAD"]
            line += f"; {states.count('ALIVE')} of {len(states)} {STAGE_NAMES[stage]} actors alive"
        return line + ")"

    def _interrupt(self, reason: str, error: type[PipelineStopped]) -> None:
        """Raise ``error`` in the thread running the pipeline (it waits in Python code there),
        unless the pipeline is over: then that thread has moved on to other work."""
        with self._lock:
            if self._stop.is_set():
                return
            self.reason = reason
            log.warning("%s", reason)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._pipeline_thread),
                                                       ctypes.py_object(error))
