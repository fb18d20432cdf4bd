"""The Ray Data pipeline of ``labeler run``: a short list of named steps."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pyarrow as pa
import ray

from labeler.actors.decode import decode_batch
from labeler.actors.dinov2_scorer import Dinov2Scorer
from labeler.actors.sam2_proposer import Sam2Proposer
from labeler.actors.writer import LabelShardSink
from labeler.bank import BankFile

if TYPE_CHECKING:
    from labeler.run import RunConfig

log = logging.getLogger(__name__)

#: Logical CPUs per read + decode task. Reads wait on storage much of the
#: time, so two tasks share a CPU; being unlike the actors' request also
#: keeps Ray from fusing decoding into the model actors when there is no GPU.
DECODE_CPUS = 0.5


def _connect(address: str | None, extra_cpus: int) -> bool:
    """Join the cluster at ``address`` / ``RAY_ADDRESS``, or start a local Ray.

    Returns whether this call started Ray (and so should shut it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # Locally, the actors each hold a logical CPU; add as many so that the
    # read and write tasks still find CPUs to run on.
    ray.init(address="local", num_cpus=(os.cpu_count() or 1) + extra_cpus, include_dashboard=False, log_to_driver=True)
    return True


def _os_error_in(error: BaseException) -> OSError | None:
    """The storage error (disk full, read-only, ...) behind a failed Ray execution, if any."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


def _block_rows(config: RunConfig) -> int:
    return max(config.batch_size * 2, 8)


def run_pipeline(config: RunConfig, todo: pa.Table, bank: BankFile, *, sam2_size: int, dino_size: int) -> None:
    """Run read -> SAM2 -> DINOv2 -> write over the ``(image_id, uri)`` rows in ``todo``.

    The model actors get ``bank``'s bytes, the very bank whose hash the run checked.
    """
    started_here = _connect(config.address, config.sam2_actors + config.dinov2_actors)
    try:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and config.gpus_per_actor > 0
        device = "cuda" if use_gpu else "cpu"
        gpu_request = {"num_gpus": config.gpus_per_actor} if use_gpu else {}
        cpu_threads = None if use_gpu else max(1, (os.cpu_count() or 1) // (config.sam2_actors + config.dinov2_actors))
        step = _block_rows(config)
        blocks = [todo.slice(offset, step) for offset in range(0, todo.num_rows, step)]

        images = ray.data.from_arrow(blocks)
        decoded = images.map_batches(
            decode_batch,
            batch_size=config.batch_size,
            num_cpus=DECODE_CPUS,
            fn_kwargs=dict(sam2_size=sam2_size, dino_size=dino_size, max_pixels=config.max_pixels,
                           max_bytes=config.max_bytes, read_timeout=config.read_timeout,
                           storage_options=config.storage_options),
        )
        def model_stage(dataset: ray.data.Dataset, actor: type, actors: int, **settings) -> ray.data.Dataset:
            return dataset.map_batches(
                actor,
                batch_size=config.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
                fn_constructor_kwargs=dict(settings, device=device, cpu_threads=cpu_threads,
                                           storage_options=config.storage_options),
                **gpu_request,
            )

        proposals = model_stage(
            decoded, Sam2Proposer, config.sam2_actors, sam2=config.sam2, points_per_side=config.points_per_side,
            points_per_batch=config.points_per_batch, pred_iou_thr=config.pred_iou_thr, dtype=config.dtype,
            compile=config.compile, prompts=config.prompts, matched_points=config.matched_points,
            bank=bank if config.prompts == "matched" else None,
        )
        labels = model_stage(
            proposals, Dinov2Scorer, config.dinov2_actors, bank=bank, nms_thr=config.nms_thr,
            max_dets=config.max_dets, min_score=config.min_score, dtype=config.dtype, compile=config.compile,
        )
        try:
            labels.write_datasink(LabelShardSink(config.out, config.rows_per_shard, config.storage_options))
        except Exception as error:
            storage_error = _os_error_in(error)
            if storage_error is None:
                raise
            raise storage_error from None  # run_labeling reports it in one line
    finally:
        if started_here:
            ray.shutdown()
