"""Shared fixtures: generated datasets and a way to run the CLI in-process."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from labeler.synthetic import generate_dataset


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``labeler ARGS...`` through the real entry point, in this process."""
    from labeler.cli import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["labeler", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def refs_mixed(tmp_path_factory) -> Path:
    """Eight reference images whose annotations cycle through every segmentation kind."""
    folder = tmp_path_factory.mktemp("refs-mixed")
    return generate_dataset(folder, 8, seed=1, segmentation="mixed")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, document: dict) -> Path:
    Path(path).write_text(json.dumps(document))
    return Path(path)


def fake_run(out: Path, gt_path: Path, scores=None, extra_rows=()) -> Path:
    """A run folder whose detections are the ground-truth instances of ``gt_path``.

    ``scores`` maps annotation id -> score (default 0.9). Written through the
    real shard writer, with the run.json fields readers use.
    """
    import numpy as np
    import torch

    from labeler.io.labels import Detections, LabelRows
    from labeler.io.masks import segmentation_to_mask
    from labeler.io.rle import encode_masks
    from labeler.io.shards import write_shard

    document = load_json(gt_path)
    rows = LabelRows()
    by_image: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in document["images"]:
        height, width = image["height"], image["width"]
        detections = []
        for annotation in by_image.get(image["id"], []):
            mask = segmentation_to_mask(annotation["segmentation"], height, width, where="gt")
            (rle,) = encode_masks(torch.from_numpy(mask.astype(bool))[None])
            ys, xs = np.nonzero(mask)
            detections.append({
                "category_id": annotation["category_id"],
                "score": (scores or {}).get(annotation["id"], 0.9),
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "area": int(mask.sum()),
                "rle": rle["counts"],
            })
        uri = str(Path(gt_path).parent / "images" / image["file_name"])
        rows.add(image["id"], uri, width, height, "ok", None, Detections.from_dicts(detections), len(detections), 0)
    for row in extra_rows:
        rows.add(*row)
    out.mkdir(parents=True, exist_ok=True)
    write_shard(str(out), rows.table())
    write_json(out / "run.json", {"categories": document["categories"]})
    return out


class PickleBomb:
    """Unpickling this runs ``touch MARKER`` in the current folder: a file that
    proves a loader unpickled user data."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


class BackgroundRun:
    """``run_labeling(config)`` on a thread, to hurt it while it runs."""

    def __init__(self, config):
        import threading

        from labeler.run import run_labeling

        self.config = config
        self.outcome: dict = {}

        def run() -> None:
            try:
                self.outcome["summary"] = run_labeling(config)
            except Exception as error:  # noqa: BLE001 - shown by finish()
                self.outcome["error"] = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_for_first_shard(self, timeout: float = 300) -> None:
        """Block until a shard is published; fail if the run ended first."""
        import time

        from labeler.io.shards import list_shards

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.thread.is_alive() and not list_shards(self.config.out):
            time.sleep(0.2)
        assert self.thread.is_alive(), "the run ended before it could be interrupted: give it more work"

    def finish(self, timeout: float = 600):
        """The run's summary once it completes."""
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), f"the run did not finish within {timeout} s"
        assert "summary" in self.outcome, f"the run failed: {self.outcome.get('error')!r}"
        return self.outcome["summary"]
