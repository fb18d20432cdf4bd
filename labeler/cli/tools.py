"""``labeler bench`` and ``labeler demo``: what labelling costs here, and the whole flow on generated data."""

from __future__ import annotations

from typing import Any, Optional

import typer

from labeler.bench.config import BenchConfig
from labeler.cli.common import Help, Opt, config_command
from labeler.io import markers
from labeler.io.storage import check_output_file, check_output_folder

BENCH_OPTIONS = {
    "sam2": Opt("SAM2 spec (default: random:l on GPU, random:tiny on CPU)."),
    "dinov2": Opt("DINOv2 spec (default: random:large on GPU, random:tiny on CPU)."),
    "images": Opt("Generated images to time."),
    "image_size": Opt("WxH of the generated images.", type=str, default="%dx%d" % BenchConfig.image_size),
    "batch_size": Opt("Images per model batch."),
    "dtype": Opt(Help.DTYPE),
    "compile": Opt(Help.COMPILE),
    "compile_cache": Opt("With --compile: a folder of compile caches to load before compiling and save to after "
                         "the warm-up (labeler run's --compile-cache); the report says how long the warm-up took."),
    "points_per_side": Opt("Prompt grid side."),
    "points_per_batch": Opt("Prompts decoded together."),
    "proposals": Opt("Pin proposals scored per image (random weights change the count); 0: don't pin."),
    "prompts": Opt(Help.PROMPTS),
    "matched_points": Opt("Points kept per image with --prompts matched."),
    "warmup_batches": Opt("Untimed batches first.", flag="--warmup"),
    "device": Opt(Help.DEVICE),
    "no_ray": Opt("Time the stages only, not the Ray pipeline."),
    "json_path": Opt("Also save the report as JSON here.", flag="--json", type=Optional[str], default=None),
    "plan_images": Opt("Plan labelling this many images ...", flag="--plan"),
    "gpus": Opt("... on this many GPUs."),
    "check": Opt("Also label one batch with plain fp32 models and report how the labels differ."),
    "top_operators": Opt("Profile one batch and list this many operators with the most device time."),
}


@config_command(BENCH_OPTIONS, BenchConfig)
def bench_command(options: dict[str, Any]) -> None:
    """Time every stage on generated images, the Ray pipeline, and plan GPU-hours for N images."""
    json_path = options.pop("json_path")
    if json_path:
        check_output_file(json_path, "--json", markers.BENCH_REPORT.encode())
    from labeler.bench.config import parse_image_size
    from labeler.bench.runner import run_bench, write_report

    options["image_size"] = parse_image_size(options["image_size"])
    report = run_bench(BenchConfig(**options), say=lambda message: typer.echo(message, err=True))
    typer.echo(report.table())
    if json_path:
        write_report(report, json_path)
        typer.echo(f"wrote {json_path}")


def demo_command(
    out: str = typer.Option("demo-out", "--out", help="Folder for the generated data and outputs."),
    device: str = typer.Option("cpu", "--device", help=Help.DEVICE),
) -> None:
    """Run the flow offline on generated images with random tiny models."""
    check_output_folder(out)
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
