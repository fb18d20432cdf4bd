"""``labeler run``: its options are :class:`labeler.run.config.RunConfig`'s fields, defaults included."""

from __future__ import annotations

from typing import Any, Optional

import typer

from labeler.cli.app import state
from labeler.cli.checks import (
    CLASSES_HELP,
    COMPILE_HELP,
    DTYPE_HELP,
    MIN_SCORE_HELP,
    PROMPTS_HELP,
    STORAGE_HELP,
    apply_storage_options,
    job_paths,
)
from labeler.cli.options import Opt, config_command
from labeler.run.config import MERGED_COCO_MAX_ENTRIES, RunConfig

#: One option per RunConfig field but the two the CLI sets itself (ray_logs from --debug, replan_after fixed).
RUN_OPTIONS = {
    "bank": Opt("Prototype bank from build-bank (path or URI)."),
    "images": Opt("Folder/prefix, .txt list of URIs, or COCO .json."),
    "out": Opt("Output folder (path or URI)."),
    "sam2": Opt("SAM2 spec."),
    "image_root": Opt("Root of a COCO source's file_names."),
    "points_per_side": Opt("Prompt grid side."),
    "grid_layout": Opt("edge-to-edge: the reference's grid, outer points half a pixel inside the border "
                       "(default); cell-centres: SAM's automatic mask generator grid, fewer prompts on objects "
                       "cut by the border."),
    "points_per_batch": Opt("Prompts decoded together."),
    "pred_iou_thr": Opt("Keep proposals above this predicted IoU."),
    "nms_thr": Opt("Class-aware NMS IoU threshold."),
    "max_dets": Opt("Detections per image."),
    "min_score": Opt(MIN_SCORE_HELP, type=str),
    "classes": Opt(CLASSES_HELP),
    "max_error_rate": Opt("Exit with status 1 when more than this share of the images are errors "
                          "(0.05: 5%; 1: never)."),
    "batch_size": Opt("Images per model batch."),
    "sam2_actors": Opt("SAM2 proposal actors."),
    "dinov2_actors": Opt("DINOv2 scoring actors."),
    "gpus_per_actor": Opt("GPUs per model actor (fractions allowed)."),
    "address": Opt("Ray cluster address (default: RAY_ADDRESS or local)."),
    "overwrite": Opt("Replace a previous labeler run in OUT (only labeler's own files are removed)."),
    "max_pixels": Opt("Refuse images with more pixels (error row)."),
    "max_bytes": Opt("Refuse image files larger than this (error row)."),
    "read_timeout": Opt("Seconds to read and decode one image before it is an error row."),
    "stall_timeout": Opt("Stop the run, naming the stage, after this many seconds without progress."),
    "rows_per_shard": Opt("Images per Parquet shard."),
    "dtype": Opt(DTYPE_HELP),
    "compile": Opt(COMPILE_HELP),
    "prompts": Opt(PROMPTS_HELP),
    "matched_points": Opt("Points kept per image with --prompts matched."),
    "relist": Opt("List the source again and label added images (a rerun reuses the stored listing)."),
    "merged_coco": Opt(f"Also write one OUT/coco.json: auto (up to {MERGED_COCO_MAX_ENTRIES:,} label rows + "
                       "detections), always or never."),
    "storage_options": Opt(STORAGE_HELP, type=Optional[str]),
}


@config_command(RUN_OPTIONS, RunConfig)
def run_command(options: dict[str, Any]) -> None:
    """Label every image of a source with instance masks, streaming on Ray Data."""
    options["storage_options"] = apply_storage_options(options["storage_options"])
    options = job_paths(options, inputs=("bank", "images", "image_root"), outputs=("out",))
    from labeler.run.driver import run_labeling
    from labeler.run.summary import describe_summary

    summary = run_labeling(RunConfig(**options, ray_logs=state["debug"]))
    typer.echo(describe_summary(summary))
    failure = summary.failure()
    if failure:
        typer.echo(f"error: {failure}; the labels and error rows are in {options['out']}", err=True)
        raise typer.Exit(1)
