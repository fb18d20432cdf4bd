"""What a run did (:class:`RunSummary`) and the text ``labeler run`` prints at its end."""

from __future__ import annotations

from dataclasses import dataclass

from labeler.outdir.error_tally import ErrorTally
from labeler.outdir.listing import Listing
from labeler.outdir.shards import LabelCounts


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
