"""What a run shows: while it works, images labelled, the rate and the time left; at its end, its summary.

In a terminal, one line rewritten in place every few seconds; elsewhere (a
job log, a file) one plain line every :data:`LOG_EVERY` seconds, so a log of
a night's run stays short.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from labeler.run.manifest import RunSummary

#: Seconds between lines when the output is not a terminal.
LOG_EVERY = 60.0
#: Seconds of recent progress the rate is measured over.
RATE_WINDOW = 60.0


def format_duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class ProgressDisplay:
    """Shows ``done`` of ``total`` images with the recent rate and an ETA (module doc)."""

    def __init__(self, total: int, already_done: int = 0, stream: TextIO | None = None,
                 interactive: bool | None = None, log_every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.log_every = log_every
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque([(clock(), already_done)])
        self.last_shown = -float("inf")
        self.last_count: int | None = None  # the count the last plain line showed
        self.shown_line = False

    def rate(self) -> float:
        """Images per second over the last :data:`RATE_WINDOW` seconds (0 before any progress)."""
        (start, first), (end, last) = self.samples[0], self.samples[-1]
        return (last - first) / (end - start) if end > start else 0.0

    def line(self) -> str:
        done = self.samples[-1][1]
        share = f" ({done / self.total:.1%})" if self.total else ""
        text = f"labelled {done:,} / {self.total:,} images{share}"
        rate = self.rate()
        if rate > 0:
            text += f" · {rate:.2f} images/s · ETA {format_duration(max(self.total - done, 0) / rate)}"
        return text

    def update(self, done: int) -> None:
        """Record that ``done`` images are labelled, and show it when it is time."""
        now = self.clock()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        if self.interactive:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self.shown_line = True
        elif now - self.last_shown >= self.log_every:
            self._plain_line(now)

    def close(self) -> None:
        """End the rewritten line (in a terminal) or show the last count (elsewhere)."""
        if self.interactive and self.shown_line:
            self.stream.write("\n")
            self.shown_line = False
        elif not self.interactive and self.last_count != self.samples[-1][1]:
            self._plain_line(self.samples[-1][0])
        self.stream.flush()

    def _plain_line(self, now: float) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.last_shown, self.last_count = now, self.samples[-1][1]


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
