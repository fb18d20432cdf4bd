"""What ``labeler rescore`` takes (:class:`RescoreConfig`, one field per option) and its resume key.

Each field's default is the option's: the CLI reads them from here. Only light modules are imported, so the
CLI can check its arguments before torch or Ray load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labeler.errors import require
from labeler.label_filter import LabelFilter, parse_label_filter
from labeler.method import defaults
from labeler.run.config import DEFAULT_MAX_ERROR_RATE, MERGED_COCO_CHOICES, merge_checks, merge_settings
from labeler.run.watchdog import DEFAULT_REPLAN_AFTER, DEFAULT_STALL_TIMEOUT

if TYPE_CHECKING:
    from labeler.bank.file import PrototypeBank


@dataclass
class RescoreConfig:
    """Everything ``labeler rescore`` takes; the CLI maps its options one to one."""

    pred: str
    bank: str
    out: str
    nms_thr: float = defaults.NMS_THR
    max_dets: int = defaults.MAX_DETS
    merge: str = "soft"
    diffusion_steps: int = defaults.DIFFUSION_STEPS
    diffusion_alpha: float = defaults.DIFFUSION_ALPHA
    diffusion_lambda: float = defaults.DIFFUSION_LAMBDA
    min_score: float | str = 0.0  # one number, class=value pairs or a thresholds file (labeler.label_filter)
    classes: str | None = None
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    batch_size: int = 8
    actors: int = 2
    gpus_per_actor: float = 0.0
    address: str | None = None
    overwrite: bool = False
    rows_per_shard: int = 1000
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    replan_after: float = DEFAULT_REPLAN_AFTER
    merged_coco: str = "auto"
    ray_logs: bool = False  # Ray's own messages in the terminal (the CLI's --debug), else in a log file
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    def validate(self) -> None:
        require([
            *merge_checks(self),
            (0.0 < self.nms_thr <= 1.0, "--nms-thr must be in (0, 1]"),
            (self.max_dets >= 1, "--max-dets must be at least 1"),
            (0.0 <= self.max_error_rate <= 1.0, "--max-error-rate must be in [0, 1]"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.actors >= 1, "--actors must be at least 1"),
            (self.gpus_per_actor >= 0, "--gpus-per-actor must be non-negative"),
            (self.rows_per_shard >= 1, "--rows-per-shard must be at least 1"),
            (math.isfinite(self.stall_timeout) and self.stall_timeout > 0, "--stall-timeout must be a positive number"),
            (math.isfinite(self.replan_after) and self.replan_after > 0, "replan_after must be a positive number"),
            (self.merged_coco in MERGED_COCO_CHOICES, f"--merged-coco must be one of {', '.join(MERGED_COCO_CHOICES)}"),
        ])

    def label_filter(self, bank: PrototypeBank) -> LabelFilter:
        """``--min-score`` and ``--classes`` over the bank's classes."""
        return parse_label_filter(self.min_score, self.classes, bank.categories)

    def settings(self, bank: PrototypeBank, source: dict[str, Any]) -> dict[str, Any]:
        """What determines the labels: the run rescored (its folder id and bank) and this bank and
        method settings. A rerun must match it to resume."""
        return {
            "rescore_of": {"out": self.pred, "out_id": source["out_id"],
                           "bank_hash": source["bank"]["content_hash"]},
            "bank_hash": bank.content_hash,
            "encoder": bank.encoder,
            "nms_thr": self.nms_thr,
            "max_dets": self.max_dets,
            **merge_settings(self),
            "label_filter": self.label_filter(bank).to_json(bank.categories),
        }
