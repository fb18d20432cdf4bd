"""``labeler rescore``: a finished run's kept proposals labelled again with another bank, into a new OUT.

The run rescored (``--pred``) must have kept its proposals (``labeler run --keep-proposals``): per image, the
proposals that passed SAM2's predicted-IoU filter and their DINOv2 mask embeddings, which no bank changes.
Rescoring runs only the steps that depend on the bank (classification, class-aware NMS, soft merging on the
full-size masks, the best ``--max-dets``), through Ray Data like ``labeler run``: the new OUT gets the
rescored run's listing, its shards are written and resumed the same way (every image exactly once), and its
``run.json`` records both banks. With float32 embeddings the labels are bit for bit those of a fresh
``labeler run`` with the new bank (docs/method.md, "Rescoring").
"""

from __future__ import annotations

import logging
import time

from labeler.bank.file import BankFile, PrototypeBank
from labeler.errors import LabelerError
from labeler.io import storage
from labeler.outdir import layout as out_folder
from labeler.outdir.listing import Listing, copy_listing, load_listing
from labeler.outdir.shards import list_shards
from labeler.rescore.config import RescoreConfig
from labeler.run.driver import fill_out_folder
from labeler.run.manifest import RunSummary, read_manifest
from labeler.run.passes import Passes
from labeler.run.progress import RESCORE_STAGES

log = logging.getLogger(__name__)


def _check_source(config: RescoreConfig, bank: PrototypeBank) -> dict:
    """The rescored run's manifest, once it is known to have kept its proposals with this bank's encoder."""
    source = read_manifest(config.pred)
    settings = source.get("settings") or {}
    keep = settings.get("keep_proposals", "off")
    if keep == "off":
        origin = (source.get("rescored_from") or {}).get("out")
        hint = f" (rescore the run it came from, {origin})" if origin else \
            " (label it again with `labeler run --keep-proposals float32`)"
        raise LabelerError(f"{config.pred}: its run did not keep its proposals, nothing to rescore{hint}")
    if settings.get("encoder") != bank.encoder:
        raise LabelerError(
            f"{config.bank}: built with the encoder {bank.encoder}, but the proposals of {config.pred} were "
            f"embedded with {settings.get('encoder')}: rescoring needs a bank of the same encoder")
    return source


def rescore_labeling(config: RescoreConfig) -> RunSummary:
    """Label the images of the run ``config.pred`` again from its kept proposals with ``config.bank``,
    into ``config.out``.

    Raises:
        LabelerError: bad settings, a run that kept no proposals, a bank of another encoder, an OUT that
            holds something else or that another run is using, a stalled or failed stage.
    """
    started = time.monotonic()
    config.validate()
    storage.configure(config.storage_options)
    storage.check_output_folder(config.out)
    bank_file = BankFile.read(config.bank)
    bank = bank_file.load()
    source = _check_source(config, bank)
    source_listing = load_listing(config.pred)
    if source_listing is None:
        raise LabelerError(f"{config.pred}: no stored listing; not the output folder of a finished `labeler run`")
    thresholds = config.label_filter(bank).thresholds(bank.category_ids)
    out_folder.check_not_foreign(config.out)
    settings = {**config.settings(bank, source), "listing_version": source_listing.version}
    keep = source["settings"]["keep_proposals"]

    def make_passes(listing: Listing) -> Passes:
        from labeler.rescore.pipeline import RESCORE_STAGE_ACTORS, rescore_pipeline

        shards = list_shards(config.pred)

        def run_pass(fit, done, tracker) -> None:
            rescore_pipeline(config, shards, done, bank_file, fit, tracker, categories=bank.categories,
                             min_scores=thresholds.tolist(), embedding_dtype=keep, embedding_dim=bank.feature_dim,
                             source_root=source["source_root"])

        return Passes(RESCORE_STAGES, RESCORE_STAGE_ACTORS, {"rescore": config.actors}, config.gpus_per_actor,
                      run_pass)

    rescored_from = {"out": config.pred, "out_id": source["out_id"], "bank": source["bank"], "kept_embeddings": keep}
    return fill_out_folder(config, bank, settings, started,
                           make_listing=lambda: load_listing(config.out) or copy_listing(source_listing, config.out),
                           make_passes=make_passes, source_root=source["source_root"], sam2=source["models"]["sam2"],
                           extra={"rescored_from": rescored_from})
