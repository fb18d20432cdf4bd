"""What ``labeler estimate`` takes (:class:`EstimateConfig`, one field per option); torch-free for the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from labeler.method import defaults
from labeler.run.config import RunConfig

DEFAULT_FOLDS = 5
DEFAULT_TARGET_PRECISION = 0.9
@dataclass
class EstimateConfig:
    """What ``labeler estimate`` takes (one field per option).

    ``run`` holds the settings of each fold's ``labeler run`` (and its ``sam2`` builds the banks of
    box-only references); its bank, images, image root and out are set per fold.
    """

    refs: str
    images: str
    out: str
    dinov2: str = defaults.DINOV2
    folds: int = DEFAULT_FOLDS
    seed: int = 0
    target_precision: float = DEFAULT_TARGET_PRECISION
    device: str = "auto"
    run: RunConfig = field(default_factory=lambda: RunConfig(bank="", images="", out="", max_error_rate=1.0))
