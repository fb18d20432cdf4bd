"""What ``labeler bench`` takes (:class:`BenchConfig`, one field per option); torch-free for the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from labeler.errors import LabelerError, require
from labeler.method import defaults
from labeler.run.config import model_checks

#: Proposals per image pinned by default: with ``pred_iou_thr = 0.4`` nearly
#: every one of the 1024 grid prompts of a natural image keeps its best mask
#: (SAM2's multimask IoU predictions are mostly well above 0.4); 800 is our
#: assumption for that figure, not a measurement with real weights.
DEFAULT_PINNED_PROPOSALS = 800


@dataclass
class BenchConfig:
    """Everything ``labeler bench`` takes; ``None`` models pick by device."""

    sam2: str | None = None
    dinov2: str | None = None
    images: int = 32
    image_size: tuple[int, int] = (1152, 864)
    batch_size: int = 8
    dtype: str = "auto"
    compile: bool = False
    compile_cache: str | None = None  # a folder of compile caches shared with other runs (labeler run's --compile-cache)
    points_per_side: int = defaults.POINTS_PER_SIDE
    points_per_batch: int = defaults.POINTS_PER_BATCH
    proposals: int = DEFAULT_PINNED_PROPOSALS
    prompts: str = "grid"
    matched_points: int = defaults.MATCHED_POINTS
    warmup_batches: int = 1
    device: str = "auto"
    no_ray: bool = False
    plan_images: int | None = None
    gpus: int = 1
    check: bool = False
    top_operators: int = 0

    def validate(self) -> None:
        require([
            *model_checks(self),
            (self.images >= 1, "--images must be at least 1"),
            (min(self.image_size) >= 16, "--image-size must be at least 16x16"),
            (self.proposals >= 0, "--proposals must be 0 (not pinned) or more"),
            (self.warmup_batches >= 0, "--warmup must be 0 or more"),
            (self.plan_images is None or self.plan_images >= 1, "--plan must be at least 1 image"),
            (self.gpus >= 1, "--gpus must be at least 1"),
            (self.top_operators >= 0, "--top-operators must be 0 or more"),
        ])


def parse_image_size(text: str) -> tuple[int, int]:
    """``WxH`` to ``(width, height)``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise LabelerError(f"--image-size: expected WxH (e.g. 1152x864), got {text!r}")
    return int(parts[0]), int(parts[1])
