"""Checks and set-up every command does before any heavy import (torch, Ray), and the help texts they share."""

from __future__ import annotations

from typing import Optional

STORAGE_HELP = (
    "fsspec options as JSON, by protocol ({\"s3\": {\"endpoint_url\": ...}}) or flat for s3; "
    "credentials are best left to the standard AWS chain."
)
DTYPE_HELP = "Model precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
COMPILE_HELP = "torch.compile the networks (slow first batch, faster after)."
MIN_SCORE_HELP = (
    "Keep detections scoring at least this: a number, class=value pairs with an optional default "
    "(0.5,person=0.7), or a thresholds .json file."
)
CLASSES_HELP = "Keep only these classes: names or ids, comma-separated."
PROMPTS_HELP = "grid: every grid point; matched: only the points most like a class prototype (faster)."
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
DINOV2_HELP = "DINOv2 spec: hub id, folder, random:<arch>."


def apply_storage_options(text: Optional[str]) -> Optional[dict]:
    """Parse ``--storage-options`` and apply it to this process."""
    from labeler.io import storage

    options = storage.parse_storage_options(text)
    storage.configure(options)
    return options


def job_paths(values: dict, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> dict:
    """``values`` with the paths named by ``inputs`` and ``outputs`` (option names as Python names) as the
    command must use them (:mod:`labeler.cli.job_paths`); local inputs must exist."""
    from labeler.cli.job_paths import require_local_inputs, resolve_for_job

    flag = {name: "--" + name.replace("_", "-") for name in (*inputs, *outputs)}
    resolved = resolve_for_job({flag[n]: values[n] for n in inputs}, {flag[n]: values[n] for n in outputs})
    require_local_inputs({flag[n]: resolved[flag[n]] for n in inputs})
    return {**values, **{name: resolved[flag[name]] for name in flag}}


def require_run_folder(pred: str) -> None:
    """``--pred`` must be a finished run's folder."""
    from labeler.run.manifest import read_manifest

    read_manifest(pred)


def output_file(uri: str, option: str, marker: bytes) -> None:
    """An output file: a folder, an unwritable place, or an existing file without ``marker`` is refused."""
    from labeler.io.storage import check_output_file

    check_output_file(uri, option, marker)


def output_folder(uri: str, option: str = "--out") -> None:
    """An output folder must be a folder (or not exist yet) in a writable place."""
    from labeler.io.storage import check_output_folder

    check_output_folder(uri, option)
