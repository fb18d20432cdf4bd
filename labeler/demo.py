"""``labeler demo``: the whole flow offline, on generated images, with random tiny models.

Random weights make the labels meaningless: the demo shows that every step
runs and what it writes, not how good the method is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labeler.bank.build import build_bank
from labeler.bank.file import PrototypeBank
from labeler.quality.evaluate import EvalReport, evaluate
from labeler.run.config import RunConfig
from labeler.run.driver import run_labeling
from labeler.run.manifest import RunSummary
from labeler.synthetic import generate_dataset
from labeler.visualize import VisualizeResult, visualize

TINY_SAM2 = "random:tiny"
TINY_DINOV2 = "random:tiny"
DEMO_TARGETS = 24
DEMO_POINTS_PER_SIDE = 8
DEMO_PICTURES = 8


@dataclass
class DemoResult:
    """Where the demo put things, and what each step reported."""

    references: Path
    targets: Path  # COCO JSON of the target images (ground truth)
    bank_path: Path
    bank: PrototypeBank
    labels: Path
    run: RunSummary
    evaluation: EvalReport
    pictures: VisualizeResult


def _add_broken_image(targets: Path) -> None:
    """Put one undecodable file among the targets, listed in their COCO file."""
    (targets.parent / "images" / "broken.jpg").write_bytes(b"this is not a JPEG")
    document = json.loads(targets.read_text())
    next_id = max(image["id"] for image in document["images"]) + 1
    document["images"].append({"id": next_id, "file_name": "broken.jpg", "width": 320, "height": 256})
    targets.write_text(json.dumps(document))


def run_demo(out_dir: str | Path, device: str = "cpu") -> DemoResult:
    """Generate references and targets (one broken file among them), build a
    bank (box-only references included), label the targets, evaluate the
    labels against the targets' ground truth and draw some of them."""
    out = Path(out_dir)
    references = generate_dataset(out / "references", 8, seed=0, segmentation="mixed")
    targets = generate_dataset(out / "targets", DEMO_TARGETS, seed=1, image_format="jpg")
    _add_broken_image(targets)
    bank = build_bank(
        str(references), str(references.parent / "images"),
        dinov2=TINY_DINOV2, sam2=TINY_SAM2, shots=1, seed=0, device=device,
    )
    bank_path = out / "bank.safetensors"
    bank.save(str(bank_path))
    labels = out / "labels"
    summary = run_labeling(RunConfig(
        bank=str(bank_path), images=str(targets), image_root=str(targets.parent / "images"), out=str(labels),
        sam2=TINY_SAM2, points_per_side=DEMO_POINTS_PER_SIDE, batch_size=4, overwrite=True,
    ))
    evaluation = evaluate(str(labels), str(targets))
    (out / "eval.json").write_text(json.dumps(evaluation.to_json(), indent=2))
    pictures = visualize(str(labels), str(out / "pictures"), n=DEMO_PICTURES, min_score=0.0, gt=str(targets))
    return DemoResult(references=references, targets=targets, bank_path=bank_path, bank=bank, labels=labels,
                      run=summary, evaluation=evaluation, pictures=pictures)
