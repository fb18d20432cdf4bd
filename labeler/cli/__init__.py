"""The ``labeler`` command line: a thin layer over the Python API.

Exit status: 0 done; 1 ``labeler run`` finished but labelled no image, or
more error images than ``--max-error-rate`` allows (its summary says why);
2 a user error (:class:`labeler.errors.LabelerError`: one line, ``--debug``
shows its traceback). Paths and arguments are checked before the heavy
libraries (torch, Ray) load, so a mistyped path is reported at once.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer

from labeler.errors import LabelerError
from labeler.io import markers

app = typer.Typer(
    name="labeler",
    help="Training-free instance-mask labelling from a few reference examples (SAM2 + DINOv2, Ray Data).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags, no boxes in job logs
)

_state = {"debug": False}

STORAGE_HELP = (
    "fsspec options as JSON, by protocol ({\"s3\": {\"endpoint_url\": ...}}) or flat for s3; "
    "credentials are best left to the standard AWS chain."
)

DTYPE_HELP = "Model precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
COMPILE_HELP = "torch.compile the networks (slow first batch, faster after)."
GRID_LAYOUT_HELP = (
    "edge-to-edge: the reference's grid, outer points half a pixel inside the border (default); "
    "cell-centres: SAM's automatic mask generator grid, fewer prompts on objects cut by the border."
)
MIN_SCORE_HELP = (
    "Keep detections scoring at least this: a number, class=value pairs with an optional default "
    "(0.5,person=0.7), or a thresholds .json file."
)
CLASSES_HELP = "Keep only these classes: names or ids, comma-separated."
PROMPTS_HELP = "grid: every grid point; matched: only the points most like a class prototype (faster)."


def _storage(text: Optional[str]) -> Optional[dict]:
    """Parse ``--storage-options`` and apply it to this process."""
    from labeler.io import storage

    options = storage.parse_storage_options(text)
    storage.configure(options)
    return options


def _job_paths(inputs: dict, outputs: dict) -> dict:
    """Inputs and outputs as the command must use them (:mod:`labeler.cli.job_paths`); local inputs must exist."""
    from labeler.cli.job_paths import require_local_inputs, resolve_for_job

    resolved = resolve_for_job(inputs, outputs)
    require_local_inputs({option: resolved[option] for option in inputs})
    return resolved


def _run_folder(pred: str) -> None:
    """``--pred`` must be a finished run's folder (read before any heavy import)."""
    from labeler.outdir.readers import read_manifest

    read_manifest(pred)


def _version(value: bool) -> None:
    if value:
        from labeler import __version__

        typer.echo(f"labeler {__version__}")
        raise typer.Exit()


def _output_file(uri: str, option: str, marker: bytes) -> None:
    """An output file: a folder, an unwritable place, or an existing file without ``marker`` is refused."""
    from labeler.io.storage import check_output_file

    check_output_file(uri, option, marker)


def _output_folder(uri: str, option: str = "--out") -> None:
    from labeler.io.storage import check_output_folder

    check_output_folder(uri, option)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


@app.command("build-bank")
def build_bank_command(
    refs: str = typer.Option(..., "--refs", help="COCO JSON of the reference images (path or URI)."),
    images: str = typer.Option(..., "--images", help="Folder or prefix the file_names are relative to."),
    out: str = typer.Option(..., "--out", help="Bank file to write (.safetensors; path or URI)."),
    dinov2: str = typer.Option("facebook/dinov2-large", "--dinov2", help="DINOv2 spec: hub id, folder, random:<arch>."),
    sam2: str = typer.Option(
        "facebook/sam2.1-hiera-large", "--sam2", help="SAM2 spec, used only for box-only references."
    ),
    shots: Optional[int] = typer.Option(None, "--shots", help="Sample K references per class (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the K-shot sampling."),
    context_ratio: float = typer.Option(0.2, "--context-ratio", help="Context around each instance crop."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", help="Crops per DINOv2 forward pass."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Turn reference images and their COCO annotations into one prototype-bank file."""
    _storage(storage_options)
    paths = _job_paths({"--refs": refs, "--images": images}, {"--out": out})
    refs, images, out = paths["--refs"], paths["--images"], paths["--out"]
    _output_file(out, "--out", markers.BANK.encode())
    from labeler.bank.build import build_bank
    from labeler.bank.info import describe_bank

    bank = build_bank(
        refs, images, dinov2=dinov2, sam2=sam2, shots=shots, seed=seed,
        context_ratio=context_ratio, device=device, batch_size=batch_size,
    )
    bank.save(out)
    typer.echo(describe_bank(bank))
    typer.echo(f"\nwrote {out}: {len(bank.categories)} classes, {len(bank.annotation_ids)} reference instances")


@app.command("bank-info")
def bank_info_command(
    bank_path: str = typer.Argument(..., metavar="BANK", help="Bank file (path or URI)."),
    threshold: float = typer.Option(0.8, "--warn-similarity", help="Warn about class pairs at least this similar."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw the similarity matrix to this PNG."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Print a bank's classes, shots per class and class-to-class prototype similarity."""
    _storage(storage_options)
    if plot:
        _output_file(plot, "--plot", markers.png_text("Software", markers.PLOT_SOFTWARE))
    from labeler.bank.file import load_bank
    from labeler.bank.info import describe_bank, plot_similarity

    bank = load_bank(bank_path)
    typer.echo(describe_bank(bank, threshold))
    if plot:
        plot_similarity(bank, plot)
        typer.echo(f"wrote {plot}")


@app.command("run")
def run_command(
    bank: str = typer.Option(..., "--bank", help="Prototype bank from build-bank (path or URI)."),
    images: str = typer.Option(..., "--images", help="Folder/prefix, .txt list of URIs, or COCO .json."),
    out: str = typer.Option(..., "--out", help="Output folder (path or URI)."),
    sam2: str = typer.Option("facebook/sam2.1-hiera-large", "--sam2", help="SAM2 spec."),
    image_root: Optional[str] = typer.Option(None, "--image-root", help="Root of a COCO source's file_names."),
    points_per_side: int = typer.Option(32, "--points-per-side", help="Prompt grid side."),
    grid_layout: str = typer.Option("edge-to-edge", "--grid-layout", help=GRID_LAYOUT_HELP),
    points_per_batch: int = typer.Option(256, "--points-per-batch", help="Prompts decoded together."),
    pred_iou_thr: float = typer.Option(0.4, "--pred-iou-thr", help="Keep proposals above this predicted IoU."),
    nms_thr: float = typer.Option(0.5, "--nms-thr", help="Class-aware NMS IoU threshold."),
    max_dets: int = typer.Option(100, "--max-dets", help="Detections per image."),
    min_score: str = typer.Option("0", "--min-score", help=MIN_SCORE_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    max_error_rate: float = typer.Option(
        0.05, "--max-error-rate",
        help="Exit with status 1 when more than this share of the images are errors (0.05: 5%; 1: never).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per model batch."),
    sam2_actors: int = typer.Option(1, "--sam2-actors", help="SAM2 proposal actors."),
    dinov2_actors: int = typer.Option(1, "--dinov2-actors", help="DINOv2 scoring actors."),
    gpus_per_actor: float = typer.Option(1.0, "--gpus-per-actor", help="GPUs per model actor (fractions allowed)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or local)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a previous labeler run in OUT (only labeler's own files are removed)."
    ),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", help="Refuse images with more pixels (error row)."),
    max_bytes: int = typer.Option(1 << 30, "--max-bytes", help="Refuse image files larger than this (error row)."),
    read_timeout: float = typer.Option(
        300.0, "--read-timeout", help="Seconds to read and decode one image before it is an error row."
    ),
    stall_timeout: float = typer.Option(
        900.0, "--stall-timeout", help="Stop the run, naming the stage, after this many seconds without progress."
    ),
    rows_per_shard: int = typer.Option(1000, "--rows-per-shard", help="Images per Parquet shard."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    prompts: str = typer.Option("grid", "--prompts", help=PROMPTS_HELP),
    matched_points: int = typer.Option(256, "--matched-points", help="Points kept per image with --prompts matched."),
    relist: bool = typer.Option(
        False, "--relist", help="List the source again and label added images (a rerun reuses the stored listing)."
    ),
    merged_coco: str = typer.Option(
        "auto", "--merged-coco",
        help="Also write one OUT/coco.json: auto (up to 1,000,000 label rows + detections), always or never.",
    ),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Label every image of a source with instance masks, streaming on Ray Data."""
    options = _storage(storage_options)
    paths = _job_paths({"--bank": bank, "--images": images, "--image-root": image_root}, {"--out": out})
    bank, images, image_root, out = paths["--bank"], paths["--images"], paths["--image-root"], paths["--out"]
    from labeler.run.driver import RunConfig, describe_summary, run_labeling

    summary = run_labeling(RunConfig(
        bank=bank, images=images, out=out, sam2=sam2, image_root=image_root, points_per_side=points_per_side,
        grid_layout=grid_layout, points_per_batch=points_per_batch, pred_iou_thr=pred_iou_thr, nms_thr=nms_thr,
        max_dets=max_dets, min_score=min_score, classes=classes, max_error_rate=max_error_rate, batch_size=batch_size, sam2_actors=sam2_actors, dinov2_actors=dinov2_actors,
        gpus_per_actor=gpus_per_actor, address=address, overwrite=overwrite, max_pixels=max_pixels,
        max_bytes=max_bytes, read_timeout=read_timeout, stall_timeout=stall_timeout,
        rows_per_shard=rows_per_shard, dtype=dtype, compile=compile, prompts=prompts,
        matched_points=matched_points, relist=relist, merged_coco=merged_coco, storage_options=options,
        ray_logs=_state["debug"],
    ))
    typer.echo(describe_summary(summary))
    failure = summary.failure()
    if failure:
        typer.echo(f"error: {failure}; the labels and error rows are in {out}", err=True)
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    pred: str = typer.Option(..., "--pred", help="Run folder (its coco.json) or a COCO predictions file."),
    gt: str = typer.Option(..., "--gt", help="Ground-truth COCO JSON."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Subset: ids or names, comma-separated."),
    out: Optional[str] = typer.Option(None, "--out", help="Save the metrics as JSON here."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """COCO AP of a run against ground truth (bbox and segm, per class)."""
    _storage(storage_options)
    paths = _job_paths({"--pred": pred, "--gt": gt}, {"--out": out})
    pred, gt, out = paths["--pred"], paths["--gt"], paths["--out"]
    if out:
        _output_file(out, "--out", markers.EVAL_REPORT.encode())
    import json

    from labeler.io import storage
    from labeler.quality.evaluate import evaluate

    report = evaluate(pred, gt, categories)
    typer.echo(report.table())
    if out:
        storage.write_bytes_atomic(out, json.dumps({"format": markers.EVAL_REPORT, **report.to_json()}, indent=2).encode())
        typer.echo(f"wrote {out}")


@app.command("visualize")
def visualize_command(
    pred: str = typer.Option(..., "--pred", help="Run folder."),
    out: str = typer.Option(..., "--out", help="Folder for the pictures and index.html."),
    n: int = typer.Option(32, "--n", help="How many images to draw."),
    min_score: str = typer.Option("0.5", "--min-score", help=MIN_SCORE_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    gt: Optional[str] = typer.Option(None, "--gt", help="Ground-truth COCO JSON to draw alongside."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image sample."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Overlay pictures of sampled images, a contact sheet and a summary plot."""
    _storage(storage_options)
    paths = _job_paths({"--pred": pred, "--gt": gt}, {"--out": out})
    pred, gt, out = paths["--pred"], paths["--gt"], paths["--out"]
    _run_folder(pred)
    _output_folder(out)
    from labeler.visualize import visualize

    result = visualize(pred, out, n=n, min_score=min_score, classes=classes, gt=gt, seed=seed)
    typer.echo(f"wrote {len(result.pictures)} pictures, {result.index} and {result.summary}")


@app.command("export")
def export_command(
    pred: str = typer.Option(..., "--pred", help="Run folder."),
    fmt: str = typer.Option(..., "--format", help="coco, yolo or semantic."),
    out: str = typer.Option(..., "--out", help="Folder to write the training set into."),
    min_score: str = typer.Option("0", "--min-score", help=MIN_SCORE_HELP),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    images: Optional[str] = typer.Option(
        None, "--images", help="copy the images into the set, link them (relative links) or none; "
                               "default copy for yolo, none for coco (file_names then relative to the run's image root)."
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the images in the val split (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    keep_empty: bool = typer.Option(
        False, "--keep-empty", help="Keep images left without a detection, as background (default: leave them out)."
    ),
    simplify: float = typer.Option(1.0, "--simplify", help="YOLO polygon tolerance in pixels (0: every vertex)."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Turn a run's labels into a training set: COCO, YOLO segmentation or semantic maps."""
    _storage(storage_options)
    paths = _job_paths({"--pred": pred}, {"--out": out})
    pred, out = paths["--pred"], paths["--out"]
    _run_folder(pred)
    _output_folder(out)
    from labeler.export.training_sets import export

    result = export(pred, fmt, out, min_score=min_score, classes=classes, images=images, val_fraction=val_fraction,
                    seed=seed, keep_empty=keep_empty, simplify=simplify)
    splits = ", ".join(f"{split} {count}" for split, count in result.splits.items())
    typer.echo(f"wrote {fmt} export to {result.folder}: {result.images} images ({splits}), {result.instances} "
               f"instances; {result.images_left_out} images left out with no detection kept"
               + ("" if keep_empty else " (--keep-empty keeps them as background)"))


@app.command("estimate")
def estimate_command(
    refs: str = typer.Option(..., "--refs", help="COCO JSON of the reference images (path or URI)."),
    images: str = typer.Option(..., "--images", help="Folder or prefix the file_names are relative to."),
    out: str = typer.Option(..., "--out", help="Local folder for the folds, the report, the picture and the thresholds."),
    dinov2: str = typer.Option("facebook/dinov2-large", "--dinov2", help="DINOv2 spec: hub id, folder, random:<arch>."),
    sam2: str = typer.Option("facebook/sam2.1-hiera-large", "--sam2", help="SAM2 spec."),
    folds: int = typer.Option(5, "--folds", help="Groups of reference images (fewer images: one image per group)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split into groups."),
    target_precision: float = typer.Option(
        0.9, "--target-precision", help="Choose per-class thresholds reaching this precision on held-out images."),
    device: str = typer.Option("auto", "--device", help="Device of the bank building: auto, cpu, cuda or cuda:N."),
    points_per_side: int = typer.Option(32, "--points-per-side", help="Prompt grid side."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per model batch."),
    sam2_actors: int = typer.Option(1, "--sam2-actors", help="SAM2 proposal actors."),
    dinov2_actors: int = typer.Option(1, "--dinov2-actors", help="DINOv2 scoring actors."),
    gpus_per_actor: float = typer.Option(1.0, "--gpus-per-actor", help="GPUs per model actor (fractions allowed)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or local)."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
) -> None:
    """Estimate label quality on the references (k-fold), and choose per-class thresholds for a precision."""
    options = _storage(storage_options)
    paths = _job_paths({"--refs": refs, "--images": images}, {"--out": out})
    refs, images, out = paths["--refs"], paths["--images"], paths["--out"]
    _output_folder(out)
    from labeler.quality.estimate import EstimateConfig, describe, run_estimate

    result = run_estimate(EstimateConfig(
        refs=refs, images=images, out=out, dinov2=dinov2, sam2=sam2, folds=folds, seed=seed,
        target_precision=target_precision, device=device,
        run_options=dict(points_per_side=points_per_side, batch_size=batch_size, sam2_actors=sam2_actors,
                         dinov2_actors=dinov2_actors, gpus_per_actor=gpus_per_actor, address=address, dtype=dtype,
                         max_error_rate=1.0, storage_options=options, ray_logs=_state["debug"]),
    ))
    typer.echo(describe(result, target_precision))
    typer.echo(f"\nwrote {out}/report.txt, {out}/estimate.png, {out}/report.json and {out}/thresholds.json "
               f"(use: --min-score {out}/thresholds.json)")


review_app = typer.Typer(rich_markup_mode=None, add_completion=False)
app.add_typer(review_app, name="review",
              help="Choose the labels a person should check and hand them to Label Studio or CVAT; "
                   "`review merge` takes the corrections back.")


@review_app.callback(invoke_without_command=True)
def review_command(
    ctx: typer.Context,
    pred: Optional[str] = typer.Option(None, "--pred", help="Run folder."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the review (selection, Label Studio, CVAT)."),
    n: int = typer.Option(200, "--n", help="Images to review."),
    min_score: Optional[str] = typer.Option(None, "--min-score", help=MIN_SCORE_HELP + " Default 0.5."),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    random_fraction: float = typer.Option(
        0.25, "--random-fraction", help="Share of --n drawn at random (seeded): the unbiased estimate of quality."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random share."),
    document_root: Optional[str] = typer.Option(
        None, "--document-root",
        help="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of the Label Studio server (default: the run's image root)."),
    url_prefix: Optional[str] = typer.Option(
        None, "--url-prefix", help="Address images as this URL + file_name instead (images served over HTTP)."),
) -> None:
    """Choose the images most worth a person's time and write them for Label Studio and CVAT."""
    if ctx.invoked_subcommand is not None:
        return
    if pred is None or out is None:
        raise LabelerError("labeler review needs --pred and --out (or: labeler review merge --help)")
    paths = _job_paths({"--pred": pred}, {"--out": out})
    pred, out = paths["--pred"], paths["--out"]
    _run_folder(pred)
    _output_folder(out)
    from collections import Counter

    from labeler.review.prepare import prepare_review

    result = prepare_review(pred, out, n=n, min_score=min_score, classes=classes, random_fraction=random_fraction,
                            seed=seed, document_root=document_root, url_prefix=url_prefix)
    shares = Counter(c.share for c in result.chosen)
    reasons = Counter(c.reason for c in result.chosen if c.share == "uncertain")
    typer.echo(
        f"chose {len(result.chosen)} images: {shares['random']} at random, {shares['uncertain']} most uncertain ("
        + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) + f"); {result.predictions} "
        f"predictions\nLabel Studio: {result.tasks} with {result.config}\nCVAT (COCO 1.0): {result.cvat}\n"
        f"then: labeler review merge --pred {pred} --review {out} --labels EXPORT.json --out FINAL"
    )


@review_app.command("merge")
def review_merge_command(
    pred: str = typer.Option(..., "--pred", help="Run folder."),
    review: str = typer.Option(..., "--review", help="The folder `labeler review` wrote."),
    labels: str = typer.Option(..., "--labels", help="The reviewers' export: Label Studio JSON, or COCO from CVAT."),
    out: str = typer.Option(..., "--out", help="Folder for the final training set and the report."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the images in the val split (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
) -> None:
    """Merge reviewed labels with the auto-labels into a training set; report what reviewers changed per class."""
    paths = _job_paths({"--pred": pred, "--review": review, "--labels": labels}, {"--out": out})
    pred, review, labels, out = paths["--pred"], paths["--review"], paths["--labels"], paths["--out"]
    _run_folder(pred)
    _output_folder(out)
    from labeler.review.merge import merge_review

    result = merge_review(pred, review, labels, out, val_fraction=val_fraction, seed=seed)
    typer.echo(result.table())
    typer.echo(f"wrote {result.folder}/annotations/instances_*.json: {result.images} images, {result.instances} "
               f"instances ({result.reviewed_images} reviewed); {result.folder}/annotations/reviewed.json "
               f"(for build-bank --refs); {result.folder}/report.json")


@app.command("bench")
def bench_command(
    sam2: Optional[str] = typer.Option(None, "--sam2", help="SAM2 spec (default: random:l on GPU, random:tiny on CPU)."),
    dinov2: Optional[str] = typer.Option(
        None, "--dinov2", help="DINOv2 spec (default: random:large on GPU, random:tiny on CPU)."
    ),
    images: int = typer.Option(32, "--images", help="Generated images to time."),
    image_size: str = typer.Option("1152x864", "--image-size", help="WxH of the generated images."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per model batch."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    points_per_side: int = typer.Option(32, "--points-per-side", help="Prompt grid side."),
    points_per_batch: int = typer.Option(256, "--points-per-batch", help="Prompts decoded together."),
    proposals: int = typer.Option(
        800, "--proposals", help="Pin proposals scored per image (random weights change the count); 0: don't pin."
    ),
    prompts: str = typer.Option("grid", "--prompts", help=PROMPTS_HELP),
    matched_points: int = typer.Option(256, "--matched-points", help="Points kept per image with --prompts matched."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed batches first."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    no_ray: bool = typer.Option(False, "--no-ray", help="Time the stages only, not the Ray pipeline."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also save the report as JSON here."),
    plan: Optional[int] = typer.Option(None, "--plan", help="Plan labelling this many images ..."),
    gpus: int = typer.Option(1, "--gpus", help="... on this many GPUs."),
    check: bool = typer.Option(
        False, "--check", help="Also label one batch with plain fp32 models and report how the labels differ."
    ),
    top_operators: int = typer.Option(
        0, "--top-operators", help="Profile one batch and list this many operators with the most device time."
    ),
) -> None:
    """Time every stage on generated images, the Ray pipeline, and plan GPU-hours for N images."""
    if json_path:
        _output_file(json_path, "--json", markers.BENCH_REPORT.encode())
    from labeler.bench.runner import BenchConfig, parse_image_size, run_bench, write_report

    report = run_bench(BenchConfig(
        sam2=sam2, dinov2=dinov2, images=images, image_size=parse_image_size(image_size), batch_size=batch_size,
        dtype=dtype, compile=compile, points_per_side=points_per_side, points_per_batch=points_per_batch,
        proposals=proposals, prompts=prompts, matched_points=matched_points, warmup_batches=warmup, device=device,
        no_ray=no_ray, plan_images=plan, gpus=gpus, check=check, top_operators=top_operators,
    ), say=lambda message: typer.echo(message, err=True))
    typer.echo(report.table())
    if json_path:
        write_report(report, json_path)
        typer.echo(f"wrote {json_path}")


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo-out", "--out", help="Folder for the generated data and outputs."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Run the flow offline on generated images with random tiny models."""
    _output_folder(out)
    from labeler.demo import run_demo
    from labeler.visualize import plural

    result = run_demo(out, device=device)
    counts, folder = result.run.counts, result.labels.parent
    typer.echo(result.evaluation.table())
    typer.echo(
        f"\nreferences: {result.references}\ntargets:    {result.targets} (ground truth)\n"
        f"bank:       {result.bank_path}\n"
        f"labels:     {result.labels}/labels/*.parquet, {result.labels}/coco/*.json, {result.labels}/coco.json, "
        f"{result.labels}/run.json\n"
        f"            {plural(counts.images_ok, 'image')} labelled, {plural(counts.images_error, 'error image')} "
        f"(listed in {result.pictures.index.name}), {plural(counts.detections, 'detection')}\n"
        f"eval:       {result.labels.parent / 'eval.json'}\n"
        f"pictures:   {result.pictures.index}\n\n"
        "Next, on these labels:\n"
        f"  labeler visualize --pred {result.labels} --out {folder / 'pictures-0.5'} --min-score 0.5\n"
        f"  labeler export --pred {result.labels} --format yolo --out {folder / 'yolo'} --min-score 0.5\n"
        f"  labeler export --pred {result.labels} --format coco --out {folder / 'coco'} --min-score 0.5\n\n"
        "The demo uses random:tiny models: random weights, so the prototypes, labels and AP are "
        "meaningless. With real checkpoints:\n"
        f"  labeler build-bank --refs {result.references} --images {result.references.parent / 'images'} "
        "--out bank.safetensors --dinov2 facebook/dinov2-large --sam2 facebook/sam2.1-hiera-large\n"
        f"  labeler run --bank bank.safetensors --images {result.targets} --image-root {result.targets.parent / 'images'} "
        "--out labels-out --sam2 facebook/sam2.1-hiera-large\n"
        f"  labeler eval --pred labels-out --gt {result.targets}"
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` defaults to the process arguments.

    User errors and failures of the storage (a full disk, an unreachable
    endpoint) print one line and exit with status 2; ``--debug`` shows them
    with their traceback.
    """
    from labeler.io.storage import describe_storage_error, storage_errors

    try:
        app(args=argv)
    except LabelerError as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except storage_errors() as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: storage: {describe_storage_error(error)}", err=True)
        sys.exit(2)
