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

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from labeler.bank.file import BankFile, PrototypeBank
from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.sources import SourceEntries, read_source
from labeler.models import load_dinov2, load_sam2
from labeler.outdir import layout as out_folder
from labeler.outdir.listing import DamagedListing, Listing, load_listing, publish_listing, write_listing
from labeler.outdir.lock import OutputLock
from labeler.outdir.merged_coco import write_coco
from labeler.outdir.shards import LabelCounts, ShardIndex, coco_dir, remove_orphan_twins, retire_changed_images
from labeler.run.config import MERGED_COCO_MAX_ENTRIES, RunConfig

if TYPE_CHECKING:
    from labeler.rescore.config import RescoreConfig
from labeler.run.manifest import RunSummary, write_manifest
from labeler.run.passes import Passes, label_in_passes
from labeler.run.progress import STAGES

log = logging.getLogger(__name__)

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


def _passes(config: RunConfig, listing: Listing, bank_file: BankFile, categories: list[Category], *,
            sam2_size: int, min_scores: list[float], kept_footer: dict | None) -> Passes:
    """``labeler run``'s pipeline (:func:`labeler.run.pipeline.run_pipeline`) as :class:`Passes`."""
    from labeler.run.pipeline import MODEL_STAGE_ACTORS, run_pipeline

    def run_pass(fit, done, tracker) -> None:
        run_pipeline(config, listing, done, bank_file, fit, tracker, categories=categories, sam2_size=sam2_size,
                     min_scores=min_scores, kept_footer=kept_footer)

    return Passes(STAGES, MODEL_STAGE_ACTORS, {"sam2": config.sam2_actors, "dinov2": config.dinov2_actors},
                  config.gpus_per_actor, run_pass)


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
    if listing is not None and not config.relist:
        return listing
    written = write_listing(config.out, entries, listing, from_labels=from_labels)
    if entries.kind == "coco":
        retire_changed_images(config.out, entries.coco_images, categories)
    return publish_listing(written)


def merged_coco(config: RunConfig | RescoreConfig, counts: LabelCounts, categories: list, out_id: str,
                source_root: str) -> bool:
    """Write OUT/coco.json if asked or small enough (``--merged-coco``); remove a stale one of ours otherwise."""
    entries = counts.images_ok + counts.images_error + counts.detections
    if config.merged_coco == "always" or (config.merged_coco == "auto" and entries <= MERGED_COCO_MAX_ENTRIES):
        write_coco(config.out, categories, out_id=out_id, image_root=source_root)
        return True
    out_folder.remove_own_file(config.out, out_folder.COCO_NAME, out_id)
    log.info("%d label rows + detections: no merged coco.json (--merged-coco %s); the COCO shards are in %s/, "
             "`labeler export coco` merges them", entries, config.merged_coco, coco_dir(config.out))
    return False


def fill_out_folder(
    config: RunConfig | RescoreConfig, bank: PrototypeBank, settings: dict, started: float, *,
    make_listing: Callable[[], Listing], make_passes: Callable[[Listing], Passes], source_root: str, sam2: str,
    extra: dict | None = None,
) -> RunSummary:
    """What ``labeler run`` and ``labeler rescore`` do to their OUT, under its lock: make it ready for
    ``settings`` (or resume it), take its listing (``make_listing``), label what no shard holds yet in passes
    (``make_passes``), take repeats and images gone from the source out of the labels, repair COCO twins,
    write the merged ``coco.json`` and ``run.json`` (with ``extra`` entries). ``started``: the command's
    start (``time.monotonic``).
    """
    try:
        with OutputLock(config.out) as lock:
            out_folder.remove_temporaries(config.out)
            out_id = out_folder.prepare(config.out, settings, config.overwrite)
            remove_orphan_twins(config.out)
            listing = make_listing()
            index = ShardIndex(config.out, listing.ids(), listing.empty_id_set())
            index.update()
            skipped = index.finished()
            todo = listing.images - skipped
            log.info("%d images listed, %d already labelled, %d to do", listing.images, skipped, todo)
            ray_log = label_in_passes(make_passes(listing), config, listing, index) if todo else None
            lock.check()
            labelled = time.monotonic()
            reconciled = index.reconcile(bank.categories)
            index.repair_coco_twins(bank.categories)
            merged = merged_coco(config, index.counts, bank.categories, out_id, source_root)
            summary = RunSummary(
                out=config.out, images_listed=listing.images, images_skipped=skipped, images_processed=todo,
                duplicates_removed=reconciled.duplicates, rows_not_listed=reconciled.not_listed,
                counts=index.counts, wall_seconds=time.monotonic() - started, listing=listing,
                shards=index.shards, merged_coco=merged, after_last_image_seconds=time.monotonic() - labelled,
                errors=index.errors, max_error_rate=config.max_error_rate, source_root=source_root, ray_log=ray_log,
            )
            write_manifest(config, bank, settings, summary, out_id, sam2=sam2, extra=extra)
    except OSError as error:
        raise LabelerError(
            f"writing to {config.out} failed: {error.strerror or error}; "
            "finished shards are kept, rerun the same command to resume"
        ) from None
    return summary


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
    kept_footer = None if config.keep_proposals == "off" else {
        "embedding_dtype": config.keep_proposals, "embedding_dim": bank.feature_dim, "encoder": bank.encoder,
        "sam2": config.sam2}

    def make_passes(listing: Listing) -> Passes:
        return _passes(config, listing, bank_file, bank.categories, sam2_size=sam2_size,
                       min_scores=thresholds.tolist(), kept_footer=kept_footer)

    return fill_out_folder(config, bank, config.settings(bank), started,
                           make_listing=lambda: _listing(config, entries, bank.categories), make_passes=make_passes,
                           source_root=config.source_root, sam2=config.sam2)
