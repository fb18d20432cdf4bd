"""Every fast path against the plain fp32 path, on the same generated images.

Exact paths (same arithmetic, other batching or layout) must give the same
labels; reduced precision and compilation are held to stated tolerances.
"""

import numpy as np
import pytest
import torch

from labeler.actors.decode import decode_batch
from labeler.actors.dinov2_scorer import Dinov2Scorer
from labeler.actors.sam2_proposer import Sam2Proposer
from labeler.bank.build import build_bank
from labeler.bank.file import BankFile
from labeler.bench.equivalence import compare_labels
from labeler.method import full_size_masks
from labeler.models.sam2_inference import point_proposals
from labeler.synthetic import generate_dataset

TINY = "random:tiny"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fast-path")
    references = generate_dataset(folder / "refs", 6, seed=0)
    targets = generate_dataset(folder / "targets", 4, seed=1, image_format="jpg", subfolders=False)
    bank = build_bank(str(references), str(references.parent / "images"), dinov2=TINY, sam2=TINY,
                      shots=None, seed=0, device="cpu")
    bank_path = str(folder / "bank.safetensors")
    bank.save(bank_path)
    uris = sorted(str(p) for p in (targets.parent / "images").glob("*.jpg"))
    batch = {"image_id": np.arange(len(uris)), "uri": np.array(uris, dtype=object)}
    decoded = decode_batch(batch, sam2_size=256)
    return bank_path, decoded


def stages(setup, **settings) -> tuple[Sam2Proposer, Dinov2Scorer]:
    bank_path, _ = setup
    scorer_settings = {k: settings[k] for k in ("dtype", "compile", "compile_cache") if k in settings}
    bank = BankFile.read(bank_path)
    proposer = Sam2Proposer(TINY, device="cpu", points_per_side=8, bank=bank, **settings)
    return proposer, Dinov2Scorer(bank, device="cpu", **scorer_settings)


def label(setup, **settings) -> list[dict]:
    proposer, scorer = stages(setup, **settings)
    return scorer(proposer(dict(setup[1]))).to_pylist()


def assert_equivalent(plain: list[dict], fast: list[dict], min_iou: float, max_score_diff: float) -> None:
    """Same images, same number of detections; each plain detection has a fast one
    with the same label, mask IoU >= min_iou and a score within max_score_diff."""
    agreement = compare_labels(plain, fast)
    assert agreement.same_labels, agreement
    assert agreement.min_mask_iou >= min_iou, agreement
    assert agreement.max_score_diff <= max_score_diff, agreement


@pytest.fixture(scope="module")
def plain(setup):
    return label(setup, dtype="fp32")


def test_plain_path_finds_something(plain):
    assert all(row["status"] == "ok" and row["proposals"] > 0 for row in plain)
    assert sum(len(row["detections"]) for row in plain) > 0


def test_prompts_of_several_images_in_one_batch_equal_one_image_at_a_time(setup):
    """48-prompt batches span the two 64-point images; 64-prompt batches never do.
    With fixed batches the last one is padded. Same logits to float32 rounding."""
    _, decoded = setup
    proposer = Sam2Proposer(TINY, device="cpu", points_per_side=8)
    features = proposer.encode(decoded["sam2_pixels"][:2])
    points = [proposer.grid, proposer.grid]
    results = [
        point_proposals(proposer.decoder, features, points, points_per_batch, 0.4, fixed_batch=fixed)
        for points_per_batch, fixed in ((64, False), (48, False), (48, True))
    ]
    for other in results[1:]:
        for (logits, iou), (other_logits, other_iou) in zip(results[0], other):
            assert logits.shape == other_logits.shape and logits.shape[0] > 0
            assert torch.allclose(logits, other_logits, atol=1e-4)
            assert torch.allclose(iou, other_iou, atol=1e-5)


def test_final_masks_in_chunks_equal_one_chunk(setup, plain, monkeypatch):
    monkeypatch.setitem(full_size_masks.UPSAMPLE_PIXELS_PER_CHUNK, "cpu", 1)  # one mask per chunk
    assert label(setup, dtype="fp32") == plain


def test_matched_prompts_at_every_grid_point_equal_the_grid(setup, plain):
    """All 64 points matched: the same prompts, so the same proposals and masks; the
    DINOv2 features then travel as float16, so scores agree to 1e-3."""
    matched = label(setup, dtype="fp32", prompts="matched", matched_points=64)
    assert_equivalent(plain, matched, min_iou=1.0, max_score_diff=1e-3)


def test_matched_prompts_decode_fewer_points(setup):
    matched = label(setup, dtype="fp32", prompts="matched", matched_points=16)
    assert all(0 < row["proposals"] <= 16 for row in matched)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_matches_fp32(setup, plain, dtype):
    """Tolerance: same labels, mask IoU >= 0.85, scores within 0.1. Random tiny
    weights give salt-and-pepper masks, the worst case for IoU (every pixel is
    near an edge); measured worst here: IoU 0.89 and 0.07 (fp16)."""
    assert_equivalent(plain, label(setup, dtype=dtype), min_iou=0.85, max_score_diff=0.1)


def test_compiled_models_match_eager_and_compile_once(setup, plain, tmp_path):
    """torch.compile (inductor on the CPU here) reorders float32 arithmetic only:
    the same labels and masks, scores within 1e-4. A second batch of the same
    size runs without recompiling (SAM2's position-encoding cache is filled
    before compiling) and gives the same labels. After its first batch each
    stage saved its compile cache for the run's other actors."""
    torch._dynamo.reset()
    cache = tmp_path / "compile-cache"
    proposer, scorer = stages(setup, dtype="fp32", compile=True, compile_cache=str(cache))
    assert not proposer.compile_cache.loaded and not scorer.compile_cache.loaded
    first = scorer(proposer(dict(setup[1]))).to_pylist()
    assert_equivalent(plain, first, min_iou=1.0, max_score_diff=1e-4)
    saved = sorted(path.name.split("-")[0] for path in cache.iterdir())
    assert saved == ["dinov2", "sam2"] and proposer.compile_cache.saved and scorer.compile_cache.saved
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert scorer(proposer(dict(setup[1]))).to_pylist() == first
