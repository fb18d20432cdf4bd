"""``labeler demo``: the whole flow offline, on generated images, with random tiny models.

Random weights make the labels meaningless: the demo shows that every step
runs and what it writes, not how good the method is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labeler.bank import PrototypeBank
from labeler.build_bank import build_bank
from labeler.run import RunConfig, RunSummary, run_labeling
from labeler.synthetic import generate_dataset

TINY_SAM2 = "random:tiny"
TINY_DINOV2 = "random:tiny"
DEMO_TARGETS = 24
DEMO_POINTS_PER_SIDE = 8


@dataclass
class DemoResult:
    """Where the demo put things."""

    references: Path
    targets: Path  # the folder of target images
    bank_path: Path
    bank: PrototypeBank
    labels: Path
    run: RunSummary


def run_demo(out_dir: str | Path, device: str = "cpu") -> DemoResult:
    """Generate references and targets, build a bank (box-only references
    included), then label the targets, one broken file among them."""
    out = Path(out_dir)
    references = generate_dataset(out / "references", 8, seed=0, segmentation="mixed")
    targets = generate_dataset(out / "targets", DEMO_TARGETS, seed=1, image_format="jpg").parent / "images"
    (targets / "broken.jpg").write_bytes(b"this is not a JPEG")
    bank = build_bank(
        str(references), str(references.parent / "images"),
        dinov2=TINY_DINOV2, sam2=TINY_SAM2, shots=1, seed=0, device=device,
    )
    bank_path = out / "bank.safetensors"
    bank.save(str(bank_path))
    labels = out / "labels"
    summary = run_labeling(RunConfig(
        bank=str(bank_path), images=str(targets), out=str(labels), sam2=TINY_SAM2,
        points_per_side=DEMO_POINTS_PER_SIDE, batch_size=4, overwrite=True,
    ))
    return DemoResult(references=references, targets=targets, bank_path=bank_path, bank=bank, labels=labels,
                      run=summary)
