"""Labelling in passes, for ``labeler run`` and ``labeler rescore``: the pipeline runs until every listed image
is in a shard; a pass that loses workers is followed by another, planned on what the cluster has then
(docs/RELIABILITY.md, "The cluster path")."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labeler.errors import LabelerError
from labeler.outdir.id_set import IdSet
from labeler.outdir.listing import Listing
from labeler.outdir.shards import ShardIndex
from labeler.run.cluster import Fit

if TYPE_CHECKING:
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

#: Pipeline passes per run: the first labels everything; the next ones what was lost with failed workers.
MAX_PASSES = 3


@dataclass(frozen=True)
class Passes:
    """A pipeline and what its passes need to know of it.

    Attributes:
        stages: the progress tracker's stages, in order, the writer last (:mod:`labeler.run.progress`).
        actor_classes: model stage -> the class name of its actors (the watchdog finds them by it).
        actors: model actors asked for, per model stage.
        gpus_per_actor: GPUs each model actor holds.
        run_pass: runs the pipeline once over the listed images not in the given set, with these actors,
            reporting to the given tracker.
    """

    stages: tuple[str, ...]
    actor_classes: dict[str, str]
    actors: dict[str, int]
    gpus_per_actor: float
    run_pass: Callable[[Fit, IdSet, ActorHandle], None]


def label_in_passes(passes: Passes, config: Any, listing: Listing, index: ShardIndex) -> str | None:
    """Label the images of ``listing`` that ``index`` does not hold yet, in passes until none is missing.

    ``config`` gives ``address``, ``ray_logs``, ``stall_timeout``, ``replan_after`` and ``rows_per_shard``
    (a :class:`labeler.run.config.RunConfig` or :class:`labeler.rescore.config.RescoreConfig`). Returns
    the file Ray's messages went to (None with ``config.ray_logs``).

    Raises:
        LabelerError: the cluster cannot hold the run, a stage stalled or failed
            for good, or images were still missing after :data:`MAX_PASSES`.
    """
    from ray.exceptions import NodeDiedError, RayActorError

    from labeler.run.cluster import current_cluster, fit_actors, settle_nodes
    from labeler.run.display import ProgressDisplay
    from labeler.run.pipeline import ray_session
    from labeler.run.progress import start_tracker
    from labeler.run.watchdog import PassAbandoned, PipelineStopped, Watchdog

    scored = passes.stages[-2]  # the stage before the writer: images labelled
    display = ProgressDisplay(listing.images, index.finished())
    with ray_session(config.address, sum(passes.actors.values()), quiet=not config.ray_logs) as ray_log, \
            contextlib.closing(display):
        for attempt in range(1, MAX_PASSES + 1):
            # Sized anew each pass: the cluster may have lost nodes in the last one.
            fit = fit_actors(current_cluster(), passes.actors, passes.gpus_per_actor)
            before = index.finished()
            watchdog = Watchdog(start_tracker(passes.stages), passes.actor_classes, listing.images - before,
                                config.rows_per_shard, config.stall_timeout, config.replan_after,
                                on_progress=lambda rows, before=before: display.update(before + rows[scored]),
                                stages=passes.stages)
            done = copy.deepcopy(index.done)  # what this pass skips; the index grows while it runs
            try:
                with index.following(), watchdog:
                    passes.run_pass(fit, done, watchdog.tracker)
            except PassAbandoned:
                log.warning("pass %d abandoned (%s); planning the next one on what the cluster has now",
                            attempt, watchdog.reason)
            except (RayActorError, NodeDiedError) as lost:  # Ray Data fails a pass whose actor dies while it starts
                log.warning("pass %d lost a worker (%s); planning the next one on what the cluster has now",
                            attempt, str(lost).splitlines()[0] if str(lost) else type(lost).__name__)
            except PipelineStopped:
                raise LabelerError(
                    f"{watchdog.reason}; finished shards are kept, rerun the same command to resume"
                ) from None
            index.update()
            display.update(index.finished())
            missing = listing.images - index.finished()
            if not missing:
                return str(ray_log) if ray_log else None
            log.warning("%d images were lost with failed workers or nodes in pass %d; labelling them again",
                        missing, attempt)
            settle_nodes()  # a node lost in this pass may still be listed, and would take the next pass's actors
    raise LabelerError(
        f"{missing} images were still unlabelled after {MAX_PASSES} passes (their work was lost with "
        "failed workers or nodes each time); finished shards are kept, rerun the same command to resume"
    )
