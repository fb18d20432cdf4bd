"""The Ray Data pipeline of ``labeler rescore``: read the rescored run's shards with their kept proposals ->
rescoring actors holding the new bank -> the same label shards as ``labeler run`` writes. Lost actors and
blocks are handled as in :mod:`labeler.run.pipeline`."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import ray
from ray.util.annotations import RayDeprecationWarning

from labeler.actors.kept_reader import kept_rows
from labeler.actors.rescorer import Rescorer
from labeler.actors.writer import LabelShardSink
from labeler.bank.file import BankFile
from labeler.io.coco import Category
from labeler.outdir.id_set import IdSet
from labeler.rescore.config import RescoreConfig
from labeler.run.cluster import ACTOR_CPUS, DECODE_CPUS, WRITE_CPUS, Fit

if TYPE_CHECKING:
    from ray.actor import ActorHandle

#: Model stage -> the class of its actors, whose name the watchdog finds them by in Ray's actor table.
RESCORE_STAGE_ACTORS = {Rescorer.stage: Rescorer.__name__}


def rescore_pipeline(
    config: RescoreConfig,
    shards: list[str],
    done: IdSet,
    bank: BankFile,
    fit: Fit,
    tracker: ActorHandle,
    *,
    categories: list[Category],
    min_scores: list[float],
    embedding_dtype: str,
    embedding_dim: int,
    source_root: str,
) -> None:
    """Rescore the rows of ``shards`` (label shards of ``config.pred``) whose image is not in ``done``."""
    ray.data.DataContext.get_current().max_errored_blocks = -1
    device = "cuda" if fit.use_gpu else "cpu"
    gpu_request = {"num_gpus": config.gpus_per_actor} if fit.use_gpu else {}
    actors = fit.actors[Rescorer.stage]
    cpu_threads = None if fit.use_gpu else max(1, (os.cpu_count() or 1) // actors)
    listed = ray.data.from_items([{"shard": uri} for uri in shards], override_num_blocks=max(1, len(shards)))
    rows = listed.map_batches(kept_rows, batch_size=1, num_cpus=DECODE_CPUS,
                              fn_kwargs=dict(pred=config.pred, done=done, storage_options=config.storage_options,
                                             tracker=tracker))
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts yet
        warnings.simplefilter("ignore", RayDeprecationWarning)
        labels = rows.map_batches(
            Rescorer,
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=ACTOR_CPUS,
            fn_constructor_kwargs=dict(bank=bank, embedding_dtype=embedding_dtype, embedding_dim=embedding_dim,
                                       device=device, nms_thr=config.nms_thr, max_dets=config.max_dets,
                                       min_score=min_scores, cpu_threads=cpu_threads,
                                       storage_options=config.storage_options, tracker=tracker, merge=config.merge,
                                       diffusion=(config.diffusion_steps, config.diffusion_alpha,
                                                  config.diffusion_lambda)),
            max_restarts=0,
            **gpu_request,
        )
    sink = LabelShardSink(config.out, config.rows_per_shard, categories, source_root, config.storage_options, tracker)
    labels.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
