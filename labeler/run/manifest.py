"""``OUT/run.json``, the manifest of a run: what it did (:class:`RunSummary`), written at the end of every run and
read by every command on its results."""

from __future__ import annotations

import json
import platform
import resource
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from labeler import __version__
from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.outdir import layout as out_folder
from labeler.outdir.error_tally import ErrorTally
from labeler.outdir.shards import LabelCounts, coco_dir, labels_dir

if TYPE_CHECKING:
    from labeler.bank.file import PrototypeBank
    from labeler.outdir.listing import Listing
    from labeler.rescore.config import RescoreConfig
    from labeler.run.config import RunConfig

#: Error kinds (the most common first) listed in run.json.
ERROR_KINDS_IN_MANIFEST = 20


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


def package_versions() -> dict[str, str]:
    """The versions of labeler, Python and the libraries that decide the labels."""
    versions = {"labeler": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "transformers", "sam2", "ray", "pyarrow", "pycocotools"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(config: RunConfig | RescoreConfig, bank: PrototypeBank, settings: dict, summary: RunSummary,
                   out_id: str, *, sam2: str | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write ``OUT/run.json``: the config, the resume settings, bank, models, versions, counts and errors
    (``sam2``: the proposals' model where ``config`` has none; ``extra``: more top-level entries)."""
    public_config = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    manifest = {
        "out_id": out_id,
        "config": public_config,
        "settings": settings,
        "bank": {"path": config.bank, "content_hash": bank.content_hash},
        "categories": [{"id": c.id, "name": c.name} for c in bank.categories],
        "models": {"sam2": sam2 if sam2 is not None else config.sam2, "dinov2": bank.encoder},
        **(extra or {}),
        "versions": package_versions(),
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


def _damaged(uri: str, what: str) -> LabelerError:
    return LabelerError(f"{uri}: {what}; rerun the same `labeler run` command on this folder to write it anew "
                        "(its labels are kept)")


def read_manifest(out: str) -> dict[str, Any]:
    """``OUT/run.json``, checked; a clear error when OUT is not a finished run or its manifest is damaged."""
    uri = out_folder.join(out, out_folder.MANIFEST_NAME)
    if not storage.exists(uri):
        raise LabelerError(f"{out}: no run.json; not the output folder of a finished `labeler run`")
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(uri, "not JSON") from None
    if not isinstance(manifest, dict):
        raise _damaged(uri, "not a JSON object")
    categories = manifest.get("categories")
    if not isinstance(categories, list) or not categories or not all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and not isinstance(c.get("id"), bool)
            and isinstance(c.get("name"), str) for c in categories):
        raise _damaged(uri, "no 'categories' list of {id, name}")
    if len({c["id"] for c in categories}) != len(categories):
        raise _damaged(uri, "duplicate category ids")
    root = manifest.get("source_root")
    if root is not None and not isinstance(root, str):
        raise _damaged(uri, "'source_root' is not a string")
    return manifest


def run_categories(out: str) -> list[Category]:
    """The categories of a run, in bank order."""
    return [Category(id=c["id"], name=c["name"]) for c in read_manifest(out)["categories"]]
