"""``labeler review`` and ``labeler review merge``: hand the labels most worth a person's time to Label Studio
or CVAT, and take the corrections back as a training set."""

from __future__ import annotations

from typing import Optional

import typer

from labeler.cli.common import Help, from_run
from labeler.errors import LabelerError

review_app = typer.Typer(rich_markup_mode=None, add_completion=False)


@review_app.callback(invoke_without_command=True)
def review_command(
    ctx: typer.Context,
    pred: Optional[str] = typer.Option(None, "--pred", help="Run folder."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the review (selection, Label Studio, CVAT)."),
    n: int = typer.Option(200, "--n", help="Images to review."),
    min_score: Optional[str] = typer.Option(None, "--min-score", help=Help.MIN_SCORE + " Default 0.5."),
    classes: Optional[str] = typer.Option(None, "--classes", help=Help.CLASSES),
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
    paths = from_run(pred, out)
    pred, out = paths["pred"], paths["out"]
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
    paths = from_run(pred, out, review=review, labels=labels)
    pred, review, labels, out = paths["pred"], paths["review"], paths["labels"], paths["out"]
    from labeler.review.merge import merge_review

    result = merge_review(pred, review, labels, out, val_fraction=val_fraction, seed=seed)
    typer.echo(result.table())
    typer.echo(f"wrote {result.folder}/annotations/instances_*.json: {result.images} images, {result.instances} "
               f"instances ({result.reviewed_images} reviewed); {result.folder}/annotations/reviewed.json "
               f"(for build-bank --refs); {result.folder}/report.json")
