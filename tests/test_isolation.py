"""Per-image fault isolation in the model stages, through the actors themselves (as Ray Data calls them):
an exception for one image is that image's error row; a stage failing on every image stops the run."""

import numpy as np
import pytest
import torch

from labeler.actors.decode import decode_batch
from labeler.actors.dinov2_scorer import Dinov2Scorer
from labeler.actors.isolation import SYSTEMIC_AFTER, SystemicFailure
from labeler.actors.sam2_proposer import Sam2Proposer
from labeler.bank.build import build_bank
from labeler.bank.file import BankFile
from labeler.synthetic import generate_dataset

POISON = 7  # grey level of the one image the injected fault fails on


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    refs = generate_dataset(root / "refs", 4, seed=1)
    build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu").save(str(root / "b.st"))
    bank = BankFile.read(str(root / "b.st"))
    proposer = Sam2Proposer("random:tiny", device="cpu", points_per_side=4, points_per_batch=8)
    scorer = Dinov2Scorer(bank, device="cpu")
    images = sorted((generate_dataset(root / "t", 3, seed=2, subfolders=False).parent / "images").iterdir())
    from PIL import Image

    Image.new("RGB", (64, 48), (POISON,) * 3).save(root / "poison.png")
    uris = [str(images[0]), str(root / "poison.png"), *map(str, images[1:])]
    batch = decode_batch({"image_id": np.arange(4), "uri": np.array(uris, dtype=object)},
                         sam2_size=proposer.image_size)
    return proposer, scorer, batch


def poisoned(pixels: np.ndarray) -> bool:
    return bool((pixels.reshape(len(pixels), -1) == POISON).all(axis=1).any())


class Method:
    """Stands in for an actor method: ``.remote(...)`` records its arguments."""

    def __init__(self):
        self.calls = []

    def remote(self, *args):
        self.calls.append(args)


class Tracker:
    """Stands in for the progress tracker actor."""

    def __init__(self):
        self.add, self.report_fatal = Method(), Method()


def copy(batch):
    return {key: value.copy() for key, value in batch.items()}


def test_an_image_sam2_fails_on_is_one_error_row_and_the_batch_is_labelled(stages, monkeypatch):
    proposer, scorer, batch = stages
    encode = Sam2Proposer.encode

    def failing_encode(self, resized):
        if poisoned(resized):
            raise RuntimeError("injected: this image breaks the encoder")
        return encode(self, resized)

    monkeypatch.setattr(Sam2Proposer, "encode", failing_encode)
    proposals = proposer(copy(batch))
    assert list(proposals["status"]) == ["ok", "error", "ok", "ok"]
    assert proposals["error"][1] == "SAM2 failed: RuntimeError: injected: this image breaks the encoder"
    table = scorer(proposals).to_pylist()
    assert [row["status"] for row in table] == ["ok", "error", "ok", "ok"]
    assert table[1]["error"] == proposals["error"][1] and table[1]["detections"] == []


def test_an_image_dinov2_fails_on_is_one_error_row(stages, monkeypatch):
    proposer, scorer, batch = stages
    proposals = proposer(copy(batch))
    received = Dinov2Scorer.received

    def failing_received(self, rows_batch, row):
        if row == 1:
            raise ValueError("injected: NaN in this image's features")
        return received(self, rows_batch, row)

    monkeypatch.setattr(Dinov2Scorer, "received", failing_received)
    table = scorer(proposals).to_pylist()
    assert [row["status"] for row in table] == ["ok", "error", "ok", "ok"]
    assert table[1]["error"] == "DINOv2 failed: ValueError: injected: NaN in this image's features"


def test_out_of_memory_is_retried_alone_with_fewer_prompts_at_a_time(stages, monkeypatch):
    proposer, _, batch = stages
    decode = Sam2Proposer.decode
    calls = []

    def memory_hungry_decode(self, features, points, pred_iou_thr=None, points_per_batch=None):
        calls.append((len(points), points_per_batch))
        if points_per_batch is None:  # the full prompt batch: too big for the "device"
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 20.00 GiB")
        return decode(self, features, points, pred_iou_thr, points_per_batch)

    monkeypatch.setattr(Sam2Proposer, "decode", memory_hungry_decode)
    proposals = proposer(copy(batch))
    assert list(proposals["status"]) == ["ok"] * 4
    assert calls[0] == (4, None) and calls.count((1, proposer.points_per_batch // 4)) == 4


def test_a_stage_failing_on_every_image_stops_the_run(stages, monkeypatch):
    proposer, _, batch = stages
    monkeypatch.setattr(Sam2Proposer, "encode", lambda self, resized: 1 / 0)
    tracker = Tracker()
    proposer.tracker, proposer.failures.length = tracker, 0
    try:
        with pytest.raises(SystemicFailure, match=f"{SYSTEMIC_AFTER} images in a row failed"):
            for _ in range(SYSTEMIC_AFTER):
                proposer(copy(batch))
    finally:
        proposer.tracker = None
    (stage, message), = tracker.report_fatal.calls
    assert stage == "sam2" and message.startswith(f"{SYSTEMIC_AFTER} images in a row failed (SAM2 failed: ZeroDivisionError")
