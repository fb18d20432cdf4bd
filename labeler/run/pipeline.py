"""The Ray Data pipeline of ``labeler run``: a short list of named steps.

Model actors are not restarted when lost (``max_restarts=0``: Ray Data's default restarts them outside
its resource budget, where they can take the CPUs the read and write tasks need; docs/RELIABILITY.md,
"The cluster path"), and a block lost with one is dropped (``max_errored_blocks=-1``), not fatal: the
watchdog (:mod:`labeler.run.watchdog`) abandons a pass left without a stage's actors, and
:func:`labeler.run.driver.run_labeling` labels the dropped blocks' images in the next pass. Every error
labeler's own code raises out of a stage is reported to the progress tracker first, which stops the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.util.annotations import RayDeprecationWarning

from labeler.actors.decode import decode_batch
from labeler.actors.dinov2_scorer import Dinov2Scorer
from labeler.actors.sam2_proposer import Sam2Proposer
from labeler.actors.work_reader import unfinished_rows
from labeler.actors.writer import LabelShardSink
from labeler.bank.file import BankFile
from labeler.io.coco import Category
from labeler.method.tiles import Tiling
from labeler.outdir.id_set import IdSet
from labeler.outdir.listing import Listing
from labeler.run.cluster import ACTOR_CPUS, DECODE_CPUS, WRITE_CPUS, Fit
from labeler.run.config import RunConfig
from labeler.run.ray_logs import send_ray_logs_to_file

if TYPE_CHECKING:
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

#: Model stage -> the class of its actors, whose name the watchdog finds them by in Ray's actor table.
MODEL_STAGE_ACTORS = {actor.stage: actor.__name__ for actor in (Sam2Proposer, Dinov2Scorer)}


@contextlib.contextmanager
def ray_session(address: str | None, extra_cpus: int, quiet: bool = True) -> Iterator[Path | None]:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` (as inside a Ray job), or start a
    local Ray with ``extra_cpus`` more logical CPUs than cores (the actors' own), and
    shut down what this call started.

    With ``quiet``, a Ray this call starts or joins keeps its messages out of
    the terminal (:mod:`labeler.run.ray_logs`): its loggers write to a file, worker
    output stays in Ray's logs, and Ray Data shows no progress of its own (the
    run shows its own). A Ray the caller started is left as the caller set it
    up. Yields the log file's path, or None.
    """
    started = False
    ray_log = None
    if not ray.is_initialized():
        if quiet:
            ray_log = send_ray_logs_to_file()
            ray.data.DataContext.get_current().enable_progress_bars = False
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=not quiet)
        else:
            ray.init(address="local", num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=False,
                     log_to_driver=not quiet)
        started = True
    try:
        yield ray_log
    finally:
        if started:
            ray.shutdown()


def run_pipeline(
    config: RunConfig,
    listing: Listing,
    done: IdSet,
    bank: BankFile,
    fit: Fit,
    tracker: ActorHandle,
    *,
    categories: list[Category],
    sam2_size: int,
    min_scores: list[float],
    kept_footer: dict | None = None,
) -> None:
    """Run read -> SAM2 -> DINOv2 -> write over the images of ``listing`` not in ``done``.

    Each task of the first step reads one part of the stored listing and keeps
    the rows still to do, so the driver holds only the parts' names. The model actors get ``bank``'s bytes, the very bank whose hash the run
    checked; every stage reports its rows to ``tracker``. ``min_scores`` holds the
    threshold of each bank class, in bank order (infinity for a class left out); ``kept_footer`` the
    footer of the kept proposals with ``--keep-proposals``. Blocks lost with an
    actor or node are dropped: the caller compares the shards with the listing.
    """
    ray.data.DataContext.get_current().max_errored_blocks = -1
    device = "cuda" if fit.use_gpu else "cpu"
    gpu_request = {"num_gpus": config.gpus_per_actor} if fit.use_gpu else {}
    actors = sum(fit.actors.values())
    cpu_threads = None if fit.use_gpu else max(1, (os.cpu_count() or 1) // actors)
    parts = ray.data.from_items([{"part": uri} for uri in listing.part_uris()], override_num_blocks=listing.parts)
    images = parts.map_batches(unfinished_rows, batch_size=1, num_cpus=DECODE_CPUS,
                               fn_kwargs=dict(done=done, storage_options=config.storage_options))
    decoded = images.map_batches(
        decode_batch,
        batch_size=config.batch_size,
        num_cpus=DECODE_CPUS,
        fn_kwargs=dict(sam2_size=sam2_size, max_pixels=config.max_pixels,
                       max_bytes=config.max_bytes, read_timeout=config.read_timeout,
                       storage_options=config.storage_options, tracker=tracker,
                       tiling=Tiling.from_option(config.tile, sam2_size, config.tile_overlap, config.tile_max_pixels)),
    )

    def model_stage(dataset: ray.data.Dataset, actor: type, size: int, **settings) -> ray.data.Dataset:
        with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts yet
            warnings.simplefilter("ignore", RayDeprecationWarning)
            return dataset.map_batches(
                actor,
                batch_size=config.batch_size,
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=ACTOR_CPUS,
                fn_constructor_kwargs=dict(settings, device=device, cpu_threads=cpu_threads,
                                           storage_options=config.storage_options, tracker=tracker,
                                           compile_cache=config.compile_cache_folder,
                                           tiles_per_batch=config.batch_size),
                max_restarts=0,  # a lost actor is not restarted, and its tasks fail now (module doc)
                **gpu_request,
            )

    proposals = model_stage(
        decoded, Sam2Proposer, fit.actors["sam2"], sam2=config.sam2, points_per_side=config.points_per_side,
        grid_layout=config.grid_layout, points_per_batch=config.points_per_batch, pred_iou_thr=config.pred_iou_thr, dtype=config.dtype,
        compile=config.compile, prompts=config.prompts, matched_points=config.matched_points,
        bank=bank if config.prompts == "matched" else None,
    )
    labels = model_stage(
        proposals, Dinov2Scorer, fit.actors["dinov2"], bank=bank, nms_thr=config.nms_thr,
        max_dets=config.max_dets, min_score=min_scores, dtype=config.dtype, compile=config.compile,
        keep_proposals=config.keep_proposals, merge=config.merge,
        diffusion=(config.diffusion_steps, config.diffusion_alpha, config.diffusion_lambda),
    )
    sink = LabelShardSink(config.out, config.rows_per_shard, categories, config.source_root, config.storage_options,
                          tracker, kept_footer=kept_footer)
    labels.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
