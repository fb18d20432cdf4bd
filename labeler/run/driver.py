"""``labeler run``: label every image of a source, streaming through Ray Data.

Stages (DESIGN.md, "Data flow"): list the source into OUT (once; reruns
reuse the stored listing) -> read + decode (CPU tasks) -> SAM2 proposal
actors -> DINOv2 scoring actors holding the bank -> Parquet shards with
their COCO twins; then the duplicate pass, a merged ``coco.json`` for small
runs and the ``run.json`` manifest. Every input image ends up exactly once in
the shards, as labels or as an error row, and a rerun on the same OUT resumes
where the last one stopped. Nothing the driver holds or does after the last
image grows with the number of images beyond a bit per image (the finished
set) and a read of each shard's ids and footer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from labeler import __version__
from labeler.actors.decode import DEFAULT_READ_TIMEOUT
from labeler.bank.file import BankFile, PrototypeBank
from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from labeler.io.sources import SourceEntries, read_source, source_root
from labeler.label_filter import LabelFilter, parse_label_filter
from labeler.method.matched_prompts import DEFAULT_MATCHED_POINTS, PROMPT_MODES
from labeler.method.proposals import (
    DEFAULT_GRID_LAYOUT,
    DEFAULT_POINTS_PER_BATCH,
    DEFAULT_POINTS_PER_SIDE,
    DEFAULT_PRED_IOU_THR,
    GRID_LAYOUTS,
)
from labeler.method.scoring import DEFAULT_MAX_DETS, DEFAULT_NMS_THR
from labeler.models import DEFAULT_SAM2, load_dinov2, load_sam2
from labeler.models.speedups import DTYPE_CHOICES
from labeler.outdir import layout as out_folder
from labeler.outdir.error_tally import ErrorTally
from labeler.outdir.listing import DamagedListing, Listing, load_listing, publish_listing, write_listing
from labeler.outdir.lock import OutputLock
from labeler.outdir.merged_coco import write_coco
from labeler.outdir.shards import (
    LabelCounts,
    ShardIndex,
    coco_dir,
    labels_dir,
    list_shards,
    remove_orphan_coco_shards,
    retire_changed_images,
)
from labeler.run.progress import DEFAULT_REPLAN_AFTER, DEFAULT_STALL_TIMEOUT

log = logging.getLogger(__name__)

#: ``--merged-coco``: auto writes OUT/coco.json while OUT holds at most MERGED_COCO_MAX_ENTRIES label rows
#: (ok and error: the merge reads them all) plus detections.
MERGED_COCO_CHOICES = ("auto", "always", "never")
MERGED_COCO_MAX_ENTRIES = 1_000_000
#: ``--max-error-rate``: the largest share of error images (of all images in OUT) a run may end with
#: and still exit with status 0. Real sets have a few corrupt or vanished files; a share above
#: this says something is wrong with the whole source (a wrong --image-root, a lost mount).
DEFAULT_MAX_ERROR_RATE = 0.05
#: Error kinds (the most common first) listed in run.json.
ERROR_KINDS_IN_MANIFEST = 20


@dataclass
class RunConfig:
    """Everything ``labeler run`` takes; the CLI maps its options one to one."""

    bank: str
    images: str
    out: str
    sam2: str = DEFAULT_SAM2
    image_root: str | None = None
    points_per_side: int = DEFAULT_POINTS_PER_SIDE
    grid_layout: str = DEFAULT_GRID_LAYOUT
    points_per_batch: int = DEFAULT_POINTS_PER_BATCH
    pred_iou_thr: float = DEFAULT_PRED_IOU_THR
    nms_thr: float = DEFAULT_NMS_THR
    max_dets: int = DEFAULT_MAX_DETS
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
    max_bytes: int = DEFAULT_MAX_BYTES
    read_timeout: float = DEFAULT_READ_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    replan_after: float = DEFAULT_REPLAN_AFTER
    rows_per_shard: int = 1000
    dtype: str = "auto"
    compile: bool = False
    prompts: str = "grid"
    matched_points: int = DEFAULT_MATCHED_POINTS
    relist: bool = False
    merged_coco: str = "auto"
    ray_logs: bool = False  # Ray's own messages in the terminal (the CLI's --debug), else in a log file
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    def validate(self) -> None:
        checks = [
            (self.points_per_side >= 1, "--points-per-side must be at least 1"),
            (self.grid_layout in GRID_LAYOUTS, f"--grid-layout must be one of {', '.join(GRID_LAYOUTS)}"),
            (self.points_per_batch >= 1, "--points-per-batch must be at least 1"),
            (0.0 <= self.pred_iou_thr < 1.0, "--pred-iou-thr must be in [0, 1)"),
            (0.0 < self.nms_thr <= 1.0, "--nms-thr must be in (0, 1]"),
            (self.max_dets >= 1, "--max-dets must be at least 1"),
            (0.0 <= self.max_error_rate <= 1.0, "--max-error-rate must be in [0, 1]"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.sam2_actors >= 1 and self.dinov2_actors >= 1, "actor counts must be at least 1"),
            (self.gpus_per_actor >= 0, "--gpus-per-actor must be non-negative"),
            (self.rows_per_shard >= 1, "--rows-per-shard must be at least 1"),
            (self.max_pixels >= 1, "--max-pixels must be at least 1"),
            (self.max_bytes >= 1, "--max-bytes must be at least 1"),
            (math.isfinite(self.read_timeout) and self.read_timeout > 0, "--read-timeout must be a positive number"),
            (math.isfinite(self.stall_timeout) and self.stall_timeout > 0, "--stall-timeout must be a positive number"),
            (math.isfinite(self.replan_after) and self.replan_after > 0, "replan_after must be a positive number"),
            (self.dtype in DTYPE_CHOICES, f"--dtype must be one of {', '.join(DTYPE_CHOICES)}"),
            (self.prompts in PROMPT_MODES, f"--prompts must be one of {', '.join(PROMPT_MODES)}"),
            (self.matched_points >= 1, "--matched-points must be at least 1"),
            (self.merged_coco in MERGED_COCO_CHOICES, f"--merged-coco must be one of {', '.join(MERGED_COCO_CHOICES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise LabelerError(message)

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
            "label_filter": self.label_filter(bank).to_json(bank.categories),
            "max_pixels": self.max_pixels,
            "dtype": self.dtype,
            "prompts": self.prompts,
            "matched_points": self.matched_points if self.prompts == "matched" else None,
        }


@dataclass
class RunSummary:
    """What a run did and what OUT now holds."""

    out: str
    images_listed: int
    images_skipped: int
    images_processed: int
    duplicates_removed: int
    rows_not_listed: int
    counts: LabelCounts
    wall_seconds: float
    listing: Listing
    shards: int
    merged_coco: bool
    after_last_image_seconds: float
    errors: ErrorTally
    max_error_rate: float
    source_root: str
    ray_log: str | None = None  # where Ray's messages went

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Error images over all images in OUT."""
        images = self.counts.images_ok + self.counts.images_error
        return self.counts.images_error / images if images else 0.0

    def failure(self) -> str | None:
        """Why this run should exit non-zero: no image labelled, or too many errors; None when fine."""
        if self.counts.images_ok == 0:
            return f"no image was labelled ({self.counts.images_error} error images)"
        if self.error_rate > self.max_error_rate:
            return (f"{self.error_rate:.1%} of the images are errors, more than --max-error-rate "
                    f"{self.max_error_rate:g}")
        return None


#: Error kinds shown in the summary a run prints.
ERROR_KINDS_SHOWN = 5


def describe_summary(summary: RunSummary) -> str:
    """What a run prints at its end: counts, the most common error reasons with an example each, where things are."""
    counts, out = summary.counts, summary.out.rstrip("/")
    lines = [
        f"{summary.images_listed:,} images listed: {summary.images_processed:,} labelled now, "
        f"{summary.images_skipped:,} already done",
        f"OUT holds {counts.images_ok:,} ok + {counts.images_error:,} error images, {counts.detections:,} detections",
        f"{summary.wall_seconds:.1f} s, {summary.images_per_second:.2f} images/s",
    ]
    if counts.images_error:
        lines.append(f"error images: {counts.images_error:,} ({summary.error_rate:.1%}), most common reasons:")
        for kind, entry in summary.errors.most_common(ERROR_KINDS_SHOWN):
            lines.append(f"  {entry.count:>8,}  {kind}")
            lines.append(f"            e.g. {entry.example_uri}: {entry.example_reason}")
        if len(summary.errors.kinds) > ERROR_KINDS_SHOWN:
            lines.append(f"  ... {len(summary.errors.kinds) - ERROR_KINDS_SHOWN} more kinds in {out}/run.json")
    lines.append(
        f"{summary.shards} shards: {out}/labels/*.parquet, {out}/coco/*.json"
        + (f", merged {out}/coco.json" if summary.merged_coco else "") + f"; manifest {out}/run.json"
    )
    lines.append(f"file_name entries are relative to {summary.source_root}")
    if summary.ray_log:
        lines.append(f"Ray's messages: {summary.ray_log} (--debug shows them here)")
    return "\n".join(lines)


def _package_versions() -> dict[str, str]:
    versions = {"labeler": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "transformers", "sam2", "ray", "pyarrow", "pycocotools"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _preflight(config: RunConfig, bank: PrototypeBank) -> int:
    """Load both models once on the CPU so a bad spec fails before any image is read.

    Returns the SAM2 input size the decode stage resizes to.
    """
    sam2 = load_sam2(config.sam2, "cpu")
    encoder = load_dinov2(bank.encoder, "cpu", bank.input_size)
    if encoder.feature_dim != bank.feature_dim:
        raise LabelerError(
            f"{config.bank}: prototypes are {bank.feature_dim}-d but its encoder {bank.encoder} gives "
            f"{encoder.feature_dim}-d features: the bank was built with another encoder"
        )
    if bank.input_size % encoder.patch_size:
        raise LabelerError(
            f"{config.bank}: input_size {bank.input_size} is not a multiple of the encoder's "
            f"{encoder.patch_size}-pixel patches"
        )
    return int(sam2.image_size)


#: Pipeline passes per run: the first labels everything; the next ones what was lost with failed workers.
MAX_PASSES = 3


def _label(config: RunConfig, listing: Listing, index: ShardIndex, bank_file: BankFile,
           categories: list, *, sam2_size: int, min_scores: list[float]) -> str | None:
    """Label the images of ``listing`` that ``index`` does not hold yet, in passes until none is missing.

    Returns the file Ray's messages went to (None with ``config.ray_logs``).

    Raises:
        LabelerError: the cluster cannot hold the run, a stage stalled or failed
            for good, or images were still missing after :data:`MAX_PASSES`.
    """
    from ray.exceptions import NodeDiedError, RayActorError

    from labeler.run.cluster import current_cluster, fit_actors, settle_nodes
    from labeler.run.display import ProgressDisplay
    from labeler.run.pipeline import ray_session, run_pipeline
    from labeler.run.progress import PassAbandoned, PipelineStopped, Watchdog, start_tracker

    display = ProgressDisplay(listing.images, index.finished())
    with ray_session(config.address, config.sam2_actors + config.dinov2_actors, quiet=not config.ray_logs) as ray_log, \
            contextlib.closing(display):
        for attempt in range(1, MAX_PASSES + 1):
            # Sized anew each pass: the cluster may have lost nodes in the last one.
            fit = fit_actors(current_cluster(), config.sam2_actors, config.dinov2_actors, config.gpus_per_actor)
            before = index.finished()
            watchdog = Watchdog(start_tracker(), listing.images - before, config.rows_per_shard,
                                config.stall_timeout, config.replan_after,
                                on_progress=lambda rows, before=before: display.update(before + rows["dinov2"]))
            done = copy.deepcopy(index.done)  # what this pass skips; the index grows while it runs
            try:
                with index.following(), watchdog:
                    run_pipeline(config, listing, done, bank_file, fit, watchdog.tracker,
                                 categories=categories, sam2_size=sam2_size, min_scores=min_scores)
            except PassAbandoned:
                log.warning("pass %d abandoned (%s); planning the next one on what the cluster has now",
                            attempt, watchdog.reason)
            except (RayActorError, NodeDiedError) as lost:  # Ray Data fails a pass whose actor dies while it starts
                log.warning("pass %d lost a worker (%s); planning the next one on what the cluster has now",
                            attempt, str(lost).splitlines()[0] if str(lost) else type(lost).__name__)
            except PipelineStopped:
                raise LabelerError(
                    f"{watchdog.reason}; finished shards are kept, rerun the same command to resume"
                ) from None
            index.update()
            display.update(index.finished())
            missing = listing.images - index.finished()
            if not missing:
                return str(ray_log) if ray_log else None
            log.warning("%d images were lost with failed workers or nodes in pass %d; labelling them again",
                        missing, attempt)
            settle_nodes()  # a node lost in this pass may still be listed, and would take the next pass's actors
    raise LabelerError(
        f"{missing} images were still unlabelled after {MAX_PASSES} passes (their work was lost with "
        "failed workers or nodes each time); finished shards are kept, rerun the same command to resume"
    )


def _listing(config: RunConfig, entries: SourceEntries, categories: list[Category]) -> Listing:
    """The stored listing of OUT: made on the first run, redone with ``--relist``, else reused.

    A damaged listing stops a plain rerun (one line naming the file and ``--relist``);
    ``--relist`` then takes the images' ids from the labels themselves. Relisting a
    COCO source moves the labels of ids that now name other files out of the labels
    before the new listing is published.
    """
    try:
        listing = load_listing(config.out)
    except DamagedListing as damage:
        if not config.relist:
            raise
        log.warning("%s; listing the source again, ids taken from the labels", damage)
        listing, from_labels = None, True
    else:
        from_labels = False
        if listing is None and list_shards(config.out):
            raise LabelerError(
                f"{config.out} holds labels of an earlier labeler, whose image ids came from path hashes; "
                "finish it with that version, or pass --overwrite (or another --out) to label it anew"
            )
    if listing is not None and not config.relist:
        return listing
    written = write_listing(config.out, entries, listing, from_labels=from_labels)
    if entries.kind == "coco":
        retire_changed_images(config.out, entries.coco_images, categories)
    return publish_listing(written)


def _merged_coco(config: RunConfig, counts: LabelCounts, categories: list, out_id: str) -> bool:
    """Write OUT/coco.json if asked or small enough (``--merged-coco``); remove a stale one of ours otherwise."""
    entries = counts.images_ok + counts.images_error + counts.detections
    if config.merged_coco == "always" or (config.merged_coco == "auto" and entries <= MERGED_COCO_MAX_ENTRIES):
        write_coco(config.out, categories, out_id=out_id, image_root=config.source_root)
        return True
    out_folder.remove_own_file(config.out, out_folder.COCO_NAME, out_id)
    log.info("%d label rows + detections: no merged coco.json (--merged-coco %s); the COCO shards are in %s/, "
             "`labeler export coco` merges them", entries, config.merged_coco, coco_dir(config.out))
    return False


def run_labeling(config: RunConfig) -> RunSummary:
    """Label every image of ``config.images`` into ``config.out``.

    Raises:
        LabelerError: bad settings, an unusable bank or model, an unreadable
            source, an OUT that holds something else or that another run is
            using, a cluster too small for the run, a stalled or failed
            stage. Unreadable images are not errors of the run: they become
            error rows.
    """
    started = time.monotonic()
    config.validate()
    storage.configure(config.storage_options)
    storage.check_output_folder(config.out)
    bank_file = BankFile.read(config.bank)
    bank = bank_file.load()
    thresholds = config.label_filter(bank).thresholds(bank.category_ids)
    out_folder.check_not_foreign(config.out)
    sam2_size = _preflight(config, bank)
    entries = read_source(config.images, config.image_root)  # checks the source before OUT is touched
    settings = config.settings(bank)
    try:
        with OutputLock(config.out) as lock:
            out_folder.remove_temporaries(config.out)
            out_id = out_folder.prepare(config.out, settings, config.overwrite)
            remove_orphan_coco_shards(config.out)
            listing = _listing(config, entries, bank.categories)
            index = ShardIndex(config.out, listing.ids(), listing.empty_id_set())
            index.update()
            skipped = index.finished()
            todo = listing.images - skipped
            log.info("%d images listed, %d already labelled, %d to do", listing.images, skipped, todo)
            ray_log = None
            if todo:
                ray_log = _label(config, listing, index, bank_file, bank.categories, sam2_size=sam2_size,
                                 min_scores=thresholds.tolist())
            lock.check()
            labelled = time.monotonic()
            reconciled = index.reconcile(bank.categories)
            index.repair_coco_twins(bank.categories)
            merged = _merged_coco(config, index.counts, bank.categories, out_id)
            summary = RunSummary(
                out=config.out, images_listed=listing.images, images_skipped=skipped, images_processed=todo,
                duplicates_removed=reconciled.duplicates, rows_not_listed=reconciled.not_listed,
                counts=index.counts, wall_seconds=time.monotonic() - started, listing=listing,
                shards=index.shards, merged_coco=merged, after_last_image_seconds=time.monotonic() - labelled,
                errors=index.errors, max_error_rate=config.max_error_rate,
                source_root=config.source_root, ray_log=ray_log,
            )
            _write_manifest(config, bank, settings, summary, out_id)
    except OSError as error:
        raise LabelerError(
            f"writing to {config.out} failed: {error.strerror or error}; "
            "finished shards are kept, rerun the same command to resume"
        ) from None
    return summary


def _write_manifest(config: RunConfig, bank: PrototypeBank, settings: dict, summary: RunSummary, out_id: str) -> None:
    public_config = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    manifest = {
        "out_id": out_id,
        "config": public_config,
        "settings": settings,
        "bank": {"path": config.bank, "content_hash": bank.content_hash},
        "categories": [{"id": c.id, "name": c.name} for c in bank.categories],
        "models": {"sam2": config.sam2, "dinov2": bank.encoder},
        "versions": _package_versions(),
        "counts": {
            "images_listed": summary.images_listed,
            "images_ok": summary.counts.images_ok,
            "images_error": summary.counts.images_error,
            "detections": summary.counts.detections,
            "images_processed_this_run": summary.images_processed,
            "images_skipped_as_done": summary.images_skipped,
            "duplicates_removed": summary.duplicates_removed,
            "rows_moved_not_in_source": summary.rows_not_listed,
        },
        "errors": [{"kind": kind, "count": e.count, "example_uri": e.example_uri, "example_reason": e.example_reason}
                   for kind, e in summary.errors.most_common(ERROR_KINDS_IN_MANIFEST)],
        "source_root": summary.source_root,
        "performance": {
            "proposals_per_image": round(summary.counts.proposals / max(summary.counts.images_ok, 1), 1),
            "sam2_to_dinov2_bytes_per_image": round(summary.counts.transfer_bytes_per_image),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "wall_seconds": round(summary.wall_seconds, 3),
        "after_last_image_seconds": round(summary.after_last_image_seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "listing": {"kind": summary.listing.kind, "images": summary.listing.images,
                    "parts": summary.listing.parts, "version": summary.listing.version},
        "labels": labels_dir(config.out),
        "parquet_shards": summary.shards,
        "coco_shards": coco_dir(config.out),
        "merged_coco": out_folder.join(config.out, out_folder.COCO_NAME) if summary.merged_coco else None,
    }
    storage.write_bytes_atomic(out_folder.join(config.out, out_folder.MANIFEST_NAME), json.dumps(manifest, indent=2).encode())
