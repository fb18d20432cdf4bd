"""``labeler estimate``: its options are EstimateConfig's fields and a few of ``labeler run``'s."""

from __future__ import annotations

from typing import Any

import typer

from labeler.cli.app import state
from labeler.cli.checks import DEVICE_HELP, DINOV2_HELP, apply_storage_options, job_paths, output_folder
from labeler.cli.options import Opt, config_command, fields_of
from labeler.cli.run import RUN_OPTIONS
from labeler.quality.estimate_config import EstimateConfig
from labeler.run.config import RunConfig

#: The ``labeler run`` options each fold's run takes from the command line.
FOLD_RUN_OPTIONS = ("sam2", "points_per_side", "batch_size", "sam2_actors", "dinov2_actors", "gpus_per_actor",
                    "address", "dtype", "storage_options")

ESTIMATE_OPTIONS = {
    "refs": Opt("COCO JSON of the reference images (path or URI)."),
    "images": Opt("Folder or prefix the file_names are relative to."),
    "out": Opt("Local folder for the folds, the report, the picture and the thresholds."),
    "dinov2": Opt(DINOV2_HELP),
    "folds": Opt("Groups of reference images (fewer images: one image per group)."),
    "seed": Opt("Seed of the split into groups."),
    "target_precision": Opt("Choose per-class thresholds reaching this precision on held-out images."),
    "device": Opt("Device of the bank building: " + DEVICE_HELP),
    **{name: RUN_OPTIONS[name] for name in FOLD_RUN_OPTIONS},
}


@config_command(ESTIMATE_OPTIONS, EstimateConfig, RunConfig)
def estimate_command(options: dict[str, Any]) -> None:
    """Estimate label quality on the references (k-fold), and choose per-class thresholds for a precision."""
    options["storage_options"] = apply_storage_options(options["storage_options"])
    options = job_paths(options, inputs=("refs", "images"), outputs=("out",))
    output_folder(options["out"])
    from labeler.quality.estimate import describe, run_estimate

    run = RunConfig(bank="", images="", out="", max_error_rate=1.0, ray_logs=state["debug"],
                    **{name: options[name] for name in FOLD_RUN_OPTIONS})
    config = EstimateConfig(**fields_of(EstimateConfig, options), run=run)
    result = run_estimate(config)
    out = config.out
    typer.echo(describe(result, config.target_precision))
    typer.echo(f"\nwrote {out}/report.txt, {out}/estimate.png, {out}/report.json and {out}/thresholds.json "
               f"(use: --min-score {out}/thresholds.json)")
