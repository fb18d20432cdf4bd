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
import logging
import time

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
from labeler.outdir.shards import LabelCounts, ShardIndex, coco_dir, remove_orphan_coco_shards, retire_changed_images
from labeler.run.config import MERGED_COCO_MAX_ENTRIES, RunConfig
from labeler.run.manifest import RunSummary, write_manifest

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
    from labeler.run.pipeline import MODEL_STAGE_ACTORS, ray_session, run_pipeline
    from labeler.run.progress import start_tracker
    from labeler.run.watchdog import PassAbandoned, PipelineStopped, Watchdog

    display = ProgressDisplay(listing.images, index.finished())
    with ray_session(config.address, config.sam2_actors + config.dinov2_actors, quiet=not config.ray_logs) as ray_log, \
            contextlib.closing(display):
        for attempt in range(1, MAX_PASSES + 1):
            # Sized anew each pass: the cluster may have lost nodes in the last one.
            fit = fit_actors(current_cluster(), config.sam2_actors, config.dinov2_actors, config.gpus_per_actor)
            before = index.finished()
            watchdog = Watchdog(start_tracker(), MODEL_STAGE_ACTORS, listing.images - before, config.rows_per_shard,
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
            write_manifest(config, bank, settings, summary, out_id)
    except OSError as error:
        raise LabelerError(
            f"writing to {config.out} failed: {error.strerror or error}; "
            "finished shards are kept, rerun the same command to resume"
        ) from None
    return summary


