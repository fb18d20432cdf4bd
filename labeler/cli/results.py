"""``labeler eval``, ``labeler visualize`` and ``labeler export``: what a finished run's labels are worth,
look like, and become."""

from __future__ import annotations

from typing import Optional

import typer

from labeler.cli.common import Help, apply_storage_options, from_run, job_paths
from labeler.io import markers
from labeler.io.storage import check_output_file


def eval_command(
    pred: str = typer.Option(..., "--pred", help="Run folder (its coco.json) or a COCO predictions file."),
    gt: str = typer.Option(..., "--gt", help="Ground-truth COCO JSON."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Subset: ids or names, comma-separated."),
    out: Optional[str] = typer.Option(None, "--out", help="Save the metrics as JSON here."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=Help.STORAGE),
) -> None:
    """COCO AP of a run against ground truth (bbox and segm, per class)."""
    apply_storage_options(storage_options)
    paths = job_paths(dict(pred=pred, gt=gt, out=out), inputs=("pred", "gt"), outputs=("out",))
    pred, gt, out = paths["pred"], paths["gt"], paths["out"]
    if out:
        check_output_file(out, "--out", markers.EVAL_REPORT.encode())
    import json

    from labeler.io import storage
    from labeler.quality.evaluate import evaluate

    report = evaluate(pred, gt, categories)
    typer.echo(report.table())
    if out:
        storage.write_bytes_atomic(out, json.dumps({"format": markers.EVAL_REPORT, **report.to_json()}, indent=2).encode())
        typer.echo(f"wrote {out}")


def visualize_command(
    pred: str = typer.Option(..., "--pred", help="Run folder."),
    out: str = typer.Option(..., "--out", help="Folder for the pictures and index.html."),
    n: int = typer.Option(32, "--n", help="How many images to draw."),
    min_score: str = typer.Option("0.5", "--min-score", help=Help.MIN_SCORE),
    classes: Optional[str] = typer.Option(None, "--classes", help=Help.CLASSES),
    gt: Optional[str] = typer.Option(None, "--gt", help="Ground-truth COCO JSON to draw alongside."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image sample."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=Help.STORAGE),
) -> None:
    """Overlay pictures of sampled images, a contact sheet and a summary plot."""
    apply_storage_options(storage_options)
    paths = from_run(pred, out, gt=gt)
    pred, gt, out = paths["pred"], paths["gt"], paths["out"]
    from labeler.visualize import visualize

    result = visualize(pred, out, n=n, min_score=min_score, classes=classes, gt=gt, seed=seed)
    typer.echo(f"wrote {len(result.pictures)} pictures, {result.index} and {result.summary}")


def export_command(
    pred: str = typer.Option(..., "--pred", help="Run folder."),
    fmt: str = typer.Option(..., "--format", help="coco, yolo or semantic."),
    out: str = typer.Option(..., "--out", help="Folder to write the training set into."),
    min_score: str = typer.Option("0", "--min-score", help=Help.MIN_SCORE),
    classes: Optional[str] = typer.Option(None, "--classes", help=Help.CLASSES),
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
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=Help.STORAGE),
) -> None:
    """Turn a run's labels into a training set: COCO, YOLO segmentation or semantic maps."""
    apply_storage_options(storage_options)
    paths = from_run(pred, out)
    pred, out = paths["pred"], paths["out"]
    from labeler.export.training_sets import export

    result = export(pred, fmt, out, min_score=min_score, classes=classes, images=images, val_fraction=val_fraction,
                    seed=seed, keep_empty=keep_empty, simplify=simplify)
    splits = ", ".join(f"{split} {count}" for split, count in result.splits.items())
    typer.echo(f"wrote {fmt} export to {result.folder}: {result.images} images ({splits}), {result.instances} "
               f"instances; {result.images_left_out} images left out with no detection kept"
               + ("" if keep_empty else " (--keep-empty keeps them as background)"))
