"""``labeler run``, ``labeler rescore`` (a run's kept proposals with another bank) and ``labeler estimate`` (which
labels k folds of the references with ``run``'s code): their options are the fields of
:class:`labeler.run.config.RunConfig`, :class:`labeler.rescore.config.RescoreConfig` and
:class:`labeler.quality.estimate_config.EstimateConfig`, defaults included."""

from __future__ import annotations

from typing import Any, Optional

import typer

from labeler.cli.common import Help, Opt, apply_storage_options, config_command, job_paths, state
from labeler.io.storage import check_output_folder
from labeler.quality.estimate_config import EstimateConfig
from labeler.rescore.config import RescoreConfig
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
    "merge": Opt("How overlapping masks of a class lower each other's scores: soft (the method's semantic-aware "
                 "soft merging) or graph-diffusion (FSOD-VFM's random walk over intersection-over-self)."),
    "diffusion_steps": Opt("With --merge graph-diffusion: at most this many random-walk steps."),
    "diffusion_alpha": Opt("With --merge graph-diffusion: the walk's alpha."),
    "diffusion_lambda": Opt("With --merge graph-diffusion: the score decay's exponent, score * (1 - ios)**lambda."),
    "min_score": Opt(Help.MIN_SCORE, type=str),
    "classes": Opt(Help.CLASSES),
    "max_error_rate": Opt("Exit with status 1 when more than this share of the images are errors "
                          "(0.05: 5%; 1: never)."),
    "batch_size": Opt("Images per model batch."),
    "sam2_actors": Opt("SAM2 proposal actors."),
    "dinov2_actors": Opt("DINOv2 scoring actors."),
    "gpus_per_actor": Opt("GPUs per model actor (fractions allowed)."),
    "address": Opt("Ray cluster address (default: RAY_ADDRESS or local)."),
    "overwrite": Opt("Replace a previous labeler run in OUT (only labeler's own files are removed)."),
    "max_pixels": Opt("Refuse images with more pixels that are labelled whole (error row)."),
    "tile": Opt("Label large images in overlapping tiles, each seen by SAM2 at its full input size, and merge the "
                "tiles' detections in the image: off, auto (tiles of the SAM2 input size, for images with a side "
                "above twice that) or a tile side in pixels (images with a side above it). A tiled image keeps "
                "--max-dets per tile's worth of its area."),
    "tile_overlap": Opt("With --tile: the share of a tile its neighbour sees too."),
    "tile_max_pixels": Opt("With --tile: refuse tiled images with more pixels (error row)."),
    "max_bytes": Opt("Refuse image files larger than this (error row)."),
    "read_timeout": Opt("Seconds to read and decode one image before it is an error row."),
    "stall_timeout": Opt("Stop the run, naming the stage, after this many seconds without progress."),
    "rows_per_shard": Opt("Images per Parquet shard."),
    "dtype": Opt(Help.DTYPE),
    "compile": Opt(Help.COMPILE),
    "compile_cache": Opt("With --compile: where the actors share what they compile, so each stage compiles once "
                         "per cluster, not once per actor: auto (OUT/_state/compile-cache), off, or a folder or URI "
                         "every node reads, shared by several runs (holds compiled code: use trusted storage)."),
    "prompts": Opt(Help.PROMPTS),
    "matched_points": Opt("Points kept per image with --prompts matched."),
    "keep_proposals": Opt("Also keep, per image, the proposals and their mask embeddings (which no bank changes) "
                          "under OUT/proposals, so `labeler rescore` can label again with another bank without "
                          "the models: off, float32 (rescoring is bit for bit a fresh run) or float16 (half the "
                          "bytes)."),
    "relist": Opt("List the source again and label added images (a rerun reuses the stored listing)."),
    "merged_coco": Opt(f"Also write one OUT/coco.json: auto (up to {MERGED_COCO_MAX_ENTRIES:,} label rows + "
                       "detections), always or never."),
    "storage_options": Opt(Help.STORAGE, type=Optional[str]),
}


@config_command(RUN_OPTIONS, RunConfig)
def run_command(options: dict[str, Any]) -> None:
    """Label every image of a source with instance masks, streaming on Ray Data."""
    options["storage_options"] = apply_storage_options(options["storage_options"])
    shared_cache = ("compile_cache",) if options["compile_cache"] not in ("auto", "off") else ()
    options = job_paths(options, inputs=("bank", "images", "image_root"), outputs=("out", *shared_cache))
    from labeler.run.display import describe_summary
    from labeler.run.driver import run_labeling

    summary = run_labeling(RunConfig(**options, ray_logs=state["debug"]))
    typer.echo(describe_summary(summary))
    failure = summary.failure()
    if failure:
        typer.echo(f"error: {failure}; the labels and error rows are in {options['out']}", err=True)
        raise typer.Exit(1)


RESCORE_OPTIONS = {
    "pred": Opt("Output folder of a `labeler run --keep-proposals` (path or URI)."),
    "bank": Opt("The new prototype bank (same encoder as the run's)."),
    "out": Opt("Output folder for the new labels (path or URI)."),
    "nms_thr": RUN_OPTIONS["nms_thr"],
    "max_dets": RUN_OPTIONS["max_dets"],
    **{name: RUN_OPTIONS[name] for name in ("merge", "diffusion_steps", "diffusion_alpha", "diffusion_lambda")},
    "min_score": RUN_OPTIONS["min_score"],
    "classes": RUN_OPTIONS["classes"],
    "max_error_rate": RUN_OPTIONS["max_error_rate"],
    "batch_size": Opt("Images per rescoring batch."),
    "actors": Opt("Rescoring actors (one CPU each, and --gpus-per-actor GPUs)."),
    "gpus_per_actor": Opt("GPUs per rescoring actor (0: rescore on CPUs)."),
    "address": RUN_OPTIONS["address"],
    "overwrite": RUN_OPTIONS["overwrite"],
    "rows_per_shard": RUN_OPTIONS["rows_per_shard"],
    "stall_timeout": RUN_OPTIONS["stall_timeout"],
    "merged_coco": RUN_OPTIONS["merged_coco"],
    "storage_options": RUN_OPTIONS["storage_options"],
}


@config_command(RESCORE_OPTIONS, RescoreConfig)
def rescore_command(options: dict[str, Any]) -> None:
    """Label a finished run's images again with another bank, from its kept proposals (no model runs)."""
    options["storage_options"] = apply_storage_options(options["storage_options"])
    options = job_paths(options, inputs=("pred", "bank"), outputs=("out",))
    from labeler.rescore.driver import rescore_labeling
    from labeler.run.display import describe_summary

    summary = rescore_labeling(RescoreConfig(**options, ray_logs=state["debug"]))
    typer.echo(describe_summary(summary))
    failure = summary.failure()
    if failure:
        typer.echo(f"error: {failure}; the labels and error rows are in {options['out']}", err=True)
        raise typer.Exit(1)


#: The ``labeler run`` options each fold's run takes from the command line.
FOLD_RUN_OPTIONS = ("sam2", "points_per_side", "batch_size", "sam2_actors", "dinov2_actors", "gpus_per_actor", "merge",
                    "address", "dtype", "storage_options")

ESTIMATE_OPTIONS = {
    "refs": Opt("COCO JSON of the reference images (path or URI)."),
    "images": Opt("Folder or prefix the file_names are relative to."),
    "out": Opt("Local folder for the folds, the report, the picture and the thresholds."),
    "dinov2": Opt(Help.DINOV2),
    "folds": Opt("Groups of reference images (fewer images: one image per group)."),
    "seed": Opt("Seed of the split into groups."),
    "target_precision": Opt("Choose per-class thresholds reaching this precision on held-out images."),
    "device": Opt("Device of the bank building: " + Help.DEVICE),
    **{name: RUN_OPTIONS[name] for name in FOLD_RUN_OPTIONS},
}


@config_command(ESTIMATE_OPTIONS, EstimateConfig, RunConfig)
def estimate_command(options: dict[str, Any]) -> None:
    """Estimate label quality on the references (k-fold), and choose per-class thresholds for a precision."""
    options["storage_options"] = apply_storage_options(options["storage_options"])
    options = job_paths(options, inputs=("refs", "images"), outputs=("out",))
    check_output_folder(options["out"])
    from labeler.quality.estimate import describe, run_estimate

    run = RunConfig(bank="", images="", out="", max_error_rate=1.0, ray_logs=state["debug"],
                    **{name: options[name] for name in FOLD_RUN_OPTIONS})
    config = EstimateConfig(**{name: options[name] for name in options if name not in FOLD_RUN_OPTIONS}, run=run)
    result = run_estimate(config)
    out = config.out
    typer.echo(describe(result, config.target_precision))
    typer.echo(f"\nwrote {out}/report.txt, {out}/estimate.png, {out}/report.json and {out}/thresholds.json "
               f"(use: --min-score {out}/thresholds.json)")
