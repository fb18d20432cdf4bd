"""What ``labeler run`` takes (:class:`RunConfig`, one field per option) and its resume key (``settings``).

Each field's default is the option's: the CLI reads them from here. Only light
modules are imported, so the CLI can check its arguments before torch or Ray load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labeler.errors import require
from labeler.io.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_READ_TIMEOUT
from labeler.io.sources import source_root
from labeler.label_filter import LabelFilter, parse_label_filter
from labeler.method import defaults
from labeler.outdir import layout
from labeler.run.watchdog import DEFAULT_REPLAN_AFTER, DEFAULT_STALL_TIMEOUT

if TYPE_CHECKING:
    from labeler.bank.file import PrototypeBank

#: ``--merged-coco``: auto writes OUT/coco.json while OUT holds at most MERGED_COCO_MAX_ENTRIES label rows
#: (ok and error: the merge reads them all) plus detections.
MERGED_COCO_CHOICES = ("auto", "always", "never")
MERGED_COCO_MAX_ENTRIES = 1_000_000
#: ``--max-error-rate``: the largest share of error images (of all images in OUT) a run may end with
#: and still exit with status 0. Real sets have a few corrupt or vanished files; a share above
#: this says something is wrong with the whole source (a wrong --image-root, a lost mount).
DEFAULT_MAX_ERROR_RATE = 0.05
#: ``--keep-proposals``: off, or the dtype the kept mask embeddings are stored in (labeler.io.kept_proposals).
KEEP_CHOICES = ("off", "float32", "float16")
#: ``--tile``: the smallest tile side (a smaller one sees too little of an object to label it).
MIN_TILE = 64


def merge_checks(config: Any) -> list[tuple[bool, str]]:
    """The checks of the merge settings ``labeler run`` and ``labeler rescore`` share (:func:`require`)."""
    return [
        (config.merge in defaults.MERGE_MODES, f"--merge must be one of {', '.join(defaults.MERGE_MODES)}"),
        (config.diffusion_steps >= 1, "--diffusion-steps must be at least 1"),
        (0.0 <= config.diffusion_alpha < 1.0, "--diffusion-alpha must be in [0, 1)"),
        (config.diffusion_lambda > 0, "--diffusion-lambda must be positive"),
    ]


def merge_settings(config: Any) -> dict[str, Any]:
    """The merge settings in a resume key: graph diffusion's parameters only where it is used."""
    if config.merge == "soft":
        return {"merge": "soft"}
    return {"merge": config.merge, "diffusion": [config.diffusion_steps, config.diffusion_alpha,
                                                 config.diffusion_lambda]}


def model_checks(config: Any) -> list[tuple[bool, str]]:
    """The checks of the model settings ``labeler run`` and ``labeler bench`` share (:func:`require`)."""
    return [
        (config.points_per_side >= 1, "--points-per-side must be at least 1"),
        (config.points_per_batch >= 1, "--points-per-batch must be at least 1"),
        (config.batch_size >= 1, "--batch-size must be at least 1"),
        (config.dtype in defaults.DTYPE_CHOICES, f"--dtype must be one of {', '.join(defaults.DTYPE_CHOICES)}"),
        (config.prompts in defaults.PROMPT_MODES, f"--prompts must be one of {', '.join(defaults.PROMPT_MODES)}"),
        (config.matched_points >= 1, "--matched-points must be at least 1"),
    ]


def tile_checks(config: Any) -> list[tuple[bool, str]]:
    """The checks of ``--tile``, ``--tile-overlap`` and ``--tile-max-pixels`` (:func:`require`)."""
    size = config.tile.strip()
    return [
        (size in ("off", "auto") or (size.isdigit() and int(size) >= MIN_TILE),
         f"--tile must be off, auto or a tile side of at least {MIN_TILE} pixels, got {config.tile!r}"),
        (0.0 < config.tile_overlap <= 0.5, "--tile-overlap must be in (0, 0.5]: neighbours must share a band to join what a border cuts"),
        (config.tile_max_pixels >= 1, "--tile-max-pixels must be at least 1"),
    ]


@dataclass
class RunConfig:
    """Everything ``labeler run`` takes; the CLI maps its options one to one."""

    bank: str
    images: str
    out: str
    sam2: str = defaults.SAM2
    image_root: str | None = None
    points_per_side: int = defaults.POINTS_PER_SIDE
    grid_layout: str = defaults.GRID_LAYOUT
    points_per_batch: int = defaults.POINTS_PER_BATCH
    pred_iou_thr: float = defaults.PRED_IOU_THR
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
    sam2_actors: int = 1
    dinov2_actors: int = 1
    gpus_per_actor: float = 1.0
    address: str | None = None
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile: str = "off"  # off, auto, or a tile side in pixels (labeler.method.tiles)
    tile_overlap: float = defaults.TILE_OVERLAP
    tile_max_pixels: int = defaults.TILE_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    read_timeout: float = DEFAULT_READ_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    replan_after: float = DEFAULT_REPLAN_AFTER
    rows_per_shard: int = 1000
    dtype: str = "auto"
    compile: bool = False
    compile_cache: str = "auto"  # auto: OUT/_state/compile-cache; off; or a folder shared by several runs
    prompts: str = "grid"
    matched_points: int = defaults.MATCHED_POINTS
    keep_proposals: str = "off"  # off, or the dtype of the kept embeddings (labeler.io.kept_proposals)
    relist: bool = False
    merged_coco: str = "auto"
    ray_logs: bool = False  # Ray's own messages in the terminal (the CLI's --debug), else in a log file
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    def validate(self) -> None:
        require([
            *model_checks(self),
            *merge_checks(self),
            (self.grid_layout in defaults.GRID_LAYOUTS, f"--grid-layout must be one of {', '.join(defaults.GRID_LAYOUTS)}"),
            (0.0 <= self.pred_iou_thr < 1.0, "--pred-iou-thr must be in [0, 1)"),
            (0.0 < self.nms_thr <= 1.0, "--nms-thr must be in (0, 1]"),
            (self.max_dets >= 1, "--max-dets must be at least 1"),
            (0.0 <= self.max_error_rate <= 1.0, "--max-error-rate must be in [0, 1]"),
            (self.sam2_actors >= 1 and self.dinov2_actors >= 1, "actor counts must be at least 1"),
            (self.gpus_per_actor >= 0, "--gpus-per-actor must be non-negative"),
            (self.rows_per_shard >= 1, "--rows-per-shard must be at least 1"),
            (self.max_pixels >= 1, "--max-pixels must be at least 1"),
            *tile_checks(self),
            (self.max_bytes >= 1, "--max-bytes must be at least 1"),
            (math.isfinite(self.read_timeout) and self.read_timeout > 0, "--read-timeout must be a positive number"),
            (math.isfinite(self.stall_timeout) and self.stall_timeout > 0, "--stall-timeout must be a positive number"),
            (math.isfinite(self.replan_after) and self.replan_after > 0, "replan_after must be a positive number"),
            (self.merged_coco in MERGED_COCO_CHOICES, f"--merged-coco must be one of {', '.join(MERGED_COCO_CHOICES)}"),
            (bool(self.compile_cache.strip()), "--compile-cache must be auto, off or a folder"),
            (self.keep_proposals in KEEP_CHOICES, f"--keep-proposals must be one of {', '.join(KEEP_CHOICES)}"),
            (self.keep_proposals == "off" or self.prompts == "grid",
             "--keep-proposals needs --prompts grid: matched prompts are chosen with the bank, so they could not "
             "be rescored with another one"),
        ])

    @property
    def compile_cache_folder(self) -> str | None:
        """Where the actors share what they compile (:mod:`labeler.models.compile_cache`); None without
        ``--compile`` or with ``--compile-cache off``."""
        if not self.compile or self.compile_cache == "off":
            return None
        return layout.compile_cache_dir(self.out) if self.compile_cache == "auto" else self.compile_cache

    @property
    def source_root(self) -> str:
        """What each image's ``file_name`` is relative to (:func:`labeler.io.sources.source_root`)."""
        return source_root(self.images, self.image_root)

    def label_filter(self, bank: PrototypeBank) -> LabelFilter:
        """``--min-score`` and ``--classes`` over the bank's classes."""
        return parse_label_filter(self.min_score, self.classes, bank.categories)

    def settings(self, bank: PrototypeBank) -> dict[str, Any]:
        """What determines the labels: a rerun must match it to resume."""
        return {
            "bank_hash": bank.content_hash,
            "encoder": bank.encoder,
            "sam2": self.sam2,
            "images": self.images,
            "image_root": self.image_root,
            "points_per_side": self.points_per_side,
            "grid_layout": self.grid_layout,
            "pred_iou_thr": self.pred_iou_thr,
            "nms_thr": self.nms_thr,
            "max_dets": self.max_dets,
            **merge_settings(self),
            "label_filter": self.label_filter(bank).to_json(bank.categories),
            "max_pixels": self.max_pixels,
            **({} if self.tile == "off" else {"tile": [self.tile, self.tile_overlap, self.tile_max_pixels]}),
            "dtype": self.dtype,
            "prompts": self.prompts,
            "matched_points": self.matched_points if self.prompts == "matched" else None,
            "keep_proposals": self.keep_proposals,
        }
