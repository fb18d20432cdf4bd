"""Shared fixtures: generated datasets and a way to run the CLI in-process."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from labeler.synthetic import generate_dataset


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """Tests of a real Label Studio server run last, and the server starts now, in the background:
    its first start (the database migrations) overlaps the rest of the suite."""
    served = [item for item in items if item.get_closest_marker("label_studio")]
    if served:
        from .label_studio_server import start_in_background

        items[:] = [item for item in items if item not in served] + served
        start_in_background()


def pytest_sessionfinish(session, exitstatus):
    from . import label_studio_server

    label_studio_server.stop()


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


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for a module's runs (each joins it instead of starting its own)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def refs_mixed(tmp_path_factory) -> Path:
    """Eight reference images whose annotations cycle through every segmentation kind."""
    folder = tmp_path_factory.mktemp("refs-mixed")
    return generate_dataset(folder, 8, seed=1, segmentation="mixed")


def stored_listing(out) -> dict[str, int]:
    """The listing a run stored in ``out``: URI -> image id."""
    from labeler.outdir.listing import load_listing

    listing = load_listing(str(out))
    return {uri: image_id for table in listing.iter_tables()
            for uri, image_id in zip(table.column("uri").to_pylist(), table.column("image_id").to_pylist())}


def source_uris(source: str) -> list[str]:
    """The URIs a folder or list source holds, as read (unsorted, repeats kept)."""
    from labeler.io.sources import read_source

    return [uri for batch in read_source(source).uri_batches for uri in batch]


def assert_coco_shards_match_parquet(out) -> int:
    """Every Parquet shard has its COCO twin and no other COCO shard is left; each twin
    loads in pycocotools and holds exactly its shard's ok images and detections.
    Returns the number of detections."""
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from labeler.outdir.shards import coco_twin, list_shards

    out = str(out)
    shards = list_shards(out)
    assert sorted(Path(coco_twin(out, uri)).name for uri in shards) == sorted(p.name for p in Path(out, "coco").iterdir())
    total = 0
    for uri in shards:
        rows = pq.read_table(uri).to_pylist()
        coco = COCO(coco_twin(out, uri))
        assert sorted(coco.getImgIds()) == sorted(r["image_id"] for r in rows if r["status"] == "ok")
        expected = sorted((r["image_id"], d["category_id"], round(d["score"], 6), d["rle"]) for r in rows
                          for d in r["detections"])
        found = sorted((a["image_id"], a["category_id"], a["score"], a["segmentation"]["counts"])
                       for a in coco.loadAnns(coco.getAnnIds()))
        assert found == expected
        total += len(found)
    return total


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, document: dict) -> Path:
    Path(path).write_text(json.dumps(document))
    return Path(path)


def encode_masks(masks) -> list[dict]:
    """``[K, H, W]`` boolean masks as COCO compressed RLE dicts, through labeler's own packing
    (equal to ``pycocotools.mask.encode``: tests/test_proposal_payload.py)."""
    from labeler.io.rle import pack_masks

    packed = pack_masks(masks)
    return [{"size": [packed.height, packed.width], "counts": text} for text in packed.strings().to_pylist()]


def fake_run(out: Path, gt_path: Path, scores=None, error_rows=()) -> Path:
    """A run folder whose detections are the ground-truth instances of ``gt_path``.

    ``scores`` maps annotation id -> score (default 0.9). Written through the
    real shard writer (two shards with their COCO twins), with the run.json
    fields readers use.
    """
    import numpy as np
    import torch

    from labeler.io.labels import Detections, LabelRows
    from labeler.io.masks import segmentation_to_mask
    from labeler.outdir.shards import write_shard

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
        rows.add_ok(image_id=image["id"], uri=uri, width=width, height=height,
                    detections=Detections.from_dicts(detections), proposals=len(detections), file_name=image["file_name"])
    for image_id, uri, reason in error_rows:
        rows.add_error(image_id=image_id, uri=uri, error=reason)
    out.mkdir(parents=True, exist_ok=True)
    from labeler.io.coco import Category

    categories = [Category(c["id"], c["name"]) for c in document["categories"]]
    table = rows.table()
    half = max(table.num_rows // 2, 1)  # two shards, as a run with COCO twins writes them
    for part in (table.slice(0, half), table.slice(half)):
        if part.num_rows:
            write_shard(str(out), part, categories=categories)
    write_json(out / "run.json", {"categories": document["categories"],
                                  "source_root": str(Path(gt_path).parent / "images")})
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

        from labeler.run.driver import run_labeling

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

        from labeler.outdir.shards import list_shards

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


def overlap_fractions(masks, labels):
    """The reference's way to soft merging's overlaps, a dense float64 product of the full-size masks:
    ``[K, K]``, row i ``|m_i & m_j| / |m_i|`` where ``labels`` agree and ``i != j``, else 0."""
    import torch

    flat = masks.flatten(1).double()
    intersection = flat @ flat.T
    areas = flat.sum(dim=1)
    fractions = torch.where(areas[:, None] > 0, intersection / areas.clamp_min(1.0)[:, None], 0.0)
    same_class = labels[:, None] == labels[None, :]
    same_class.fill_diagonal_(False)
    return torch.where(same_class.to(fractions.device), fractions, 0.0)
