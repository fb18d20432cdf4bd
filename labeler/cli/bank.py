"""``labeler build-bank`` and ``labeler bank-info``: make a prototype bank and look into one."""

from __future__ import annotations

from typing import Optional

import typer

from labeler.cli.common import Help, apply_storage_options, job_paths
from labeler.io import markers
from labeler.io.storage import check_output_file
from labeler.method import defaults


def build_bank_command(
    refs: str = typer.Option(..., "--refs", help="COCO JSON of the reference images (path or URI)."),
    images: str = typer.Option(..., "--images", help="Folder or prefix the file_names are relative to."),
    out: str = typer.Option(..., "--out", help="Bank file to write (.safetensors; path or URI)."),
    dinov2: str = typer.Option(defaults.DINOV2, "--dinov2", help=Help.DINOV2),
    sam2: str = typer.Option(defaults.SAM2, "--sam2", help="SAM2 spec, used only for box-only references."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Sample K references per class (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the K-shot sampling."),
    context_ratio: float = typer.Option(defaults.CONTEXT_RATIO, "--context-ratio",
                                        help="Context around each instance crop."),
    device: str = typer.Option("auto", "--device", help=Help.DEVICE),
    batch_size: int = typer.Option(16, "--batch-size", help="Crops per DINOv2 forward pass."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=Help.STORAGE),
) -> None:
    """Turn reference images and their COCO annotations into one prototype-bank file."""
    apply_storage_options(storage_options)
    paths = job_paths(dict(refs=refs, images=images, out=out), inputs=("refs", "images"), outputs=("out",))
    check_output_file(paths["out"], "--out", markers.BANK.encode())
    from labeler.bank.build import build_bank
    from labeler.bank.info import describe_bank

    bank = build_bank(paths["refs"], paths["images"], dinov2=dinov2, sam2=sam2, shots=shots, seed=seed,
                      context_ratio=context_ratio, device=device, batch_size=batch_size)
    bank.save(paths["out"])
    typer.echo(describe_bank(bank))
    typer.echo(f"\nwrote {paths['out']}: {len(bank.categories)} classes, "
               f"{len(bank.annotation_ids)} reference instances")


def bank_info_command(
    bank_path: str = typer.Argument(..., metavar="BANK", help="Bank file (path or URI)."),
    threshold: float = typer.Option(0.8, "--warn-similarity", help="Warn about class pairs at least this similar."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw the similarity matrix to this PNG."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=Help.STORAGE),
) -> None:
    """Print a bank's classes, shots per class and class-to-class prototype similarity."""
    apply_storage_options(storage_options)
    if plot:
        check_output_file(plot, "--plot", markers.png_text("Software", markers.PLOT_SOFTWARE))
    from labeler.bank.file import load_bank
    from labeler.bank.info import describe_bank, plot_similarity

    bank = load_bank(bank_path)
    typer.echo(describe_bank(bank, threshold))
    if plot:
        plot_similarity(bank, plot)
        typer.echo(f"wrote {plot}")
