"""The ``labeler`` command line: a thin layer over the Python API.

User errors (:class:`labeler.errors.LabelerError`) print one line and exit
with status 2; ``--debug`` shows their traceback instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer

from labeler.errors import LabelerError

app = typer.Typer(
    name="labeler",
    help="Training-free instance-mask labelling from a few reference examples (SAM2 + DINOv2, Ray Data).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
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
) -> None:
    """Turn reference images and their COCO annotations into one prototype-bank file."""
    from labeler.bank_info import describe_bank
    from labeler.build_bank import build_bank

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
) -> None:
    """Print a bank's classes, shots per class and class-to-class prototype similarity."""
    from labeler.bank import load_bank
    from labeler.bank_info import describe_bank

    typer.echo(describe_bank(load_bank(bank_path), threshold))


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo-out", "--out", help="Folder for the generated data and outputs."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Run the flow offline on generated images with random tiny models."""
    from labeler.bank_info import describe_bank
    from labeler.demo import run_demo

    result = run_demo(out, device=device)
    typer.echo(describe_bank(result.bank))
    typer.echo(
        f"\nreferences: {result.references}\nbank:       {result.bank_path}\n\n"
        "The demo uses random:tiny models: random weights, so the prototypes (and any labels) are "
        "meaningless. With real checkpoints:\n"
        f"  labeler build-bank --refs {result.references} --images {result.references.parent / 'images'} "
        "--out bank.safetensors --dinov2 facebook/dinov2-large --sam2 facebook/sam2.1-hiera-large"
    )


def main() -> None:
    """Console entry point."""
    try:
        app()
    except LabelerError as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
