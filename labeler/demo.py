"""``labeler demo``: the whole flow offline, on generated images, with random tiny models.

Random weights make the labels meaningless: the demo shows that every step
runs and what it writes, not how good the method is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labeler.bank import PrototypeBank
from labeler.build_bank import build_bank
from labeler.synthetic import generate_dataset

TINY_SAM2 = "random:tiny"
TINY_DINOV2 = "random:tiny"


@dataclass
class DemoResult:
    """Where the demo put things."""

    references: Path
    bank_path: Path
    bank: PrototypeBank


def run_demo(out_dir: str | Path, device: str = "cpu") -> DemoResult:
    """Generate references, then build a bank from them (box-only references included)."""
    out = Path(out_dir)
    references = generate_dataset(out / "references", 8, seed=0, segmentation="mixed")
    bank = build_bank(
        str(references), str(references.parent / "images"),
        dinov2=TINY_DINOV2, sam2=TINY_SAM2, shots=1, seed=0, device=device,
    )
    bank_path = out / "bank.safetensors"
    bank.save(str(bank_path))
    return DemoResult(references=references, bank_path=bank_path, bank=bank)
