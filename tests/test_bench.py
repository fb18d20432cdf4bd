"""labeler bench: pinned proposals, plan arithmetic, and the command end to end."""

import json
import subprocess
import sys

import pytest
import torch

from labeler.bench.config import BenchConfig, parse_image_size
from labeler.bench.runner import MODEL_STAGES, STAGE_TITLES, make_plan, pin_proposals, pinned_count
from labeler.errors import LabelerError
from labeler.io.rle import run_lengths
from labeler.synthetic import proposal_logits


def test_pinning_keeps_the_best_ious_cycled_with_sam2_like_masks():
    logits = torch.randn(3, 16, 20)
    iou = torch.tensor([0.2, 0.9, 0.5])
    kept_logits, kept_iou = pin_proposals(logits, iou, 5, seed=3)
    assert kept_iou.tolist() == pytest.approx([0.9, 0.5, 0.2, 0.9, 0.5])
    assert torch.equal(kept_logits, proposal_logits(5, (16, 20), seed=3))
    assert pin_proposals(logits, iou, 2, seed=3)[1].tolist() == pytest.approx([0.9, 0.5])
    assert pin_proposals(logits[:0], iou[:0], 4, seed=3)[0].shape[0] == 0


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (48, 80)])
def test_synthetic_proposals_are_smooth_non_empty_and_deterministic(size):
    logits = proposal_logits(300, size, seed=1)
    masks = logits > 0
    assert logits.shape == (300, *size) and logits.abs().max() <= 32
    assert masks.flatten(1).any(dim=1).all()
    assert torch.equal(logits, proposal_logits(300, size, seed=1))
    assert not torch.equal(logits, proposal_logits(300, size, seed=2))
    # Smooth blobs: a few runs per column crossed, far fewer than salt-and-pepper masks have.
    _, runs = run_lengths(masks)
    _, noise_runs = run_lengths(torch.rand(300, *size) > 0.5)
    assert runs.double().mean() < 4 * size[1] and runs.double().mean() < noise_runs.double().mean() / 8


def test_matched_prompts_pin_the_same_surviving_fraction():
    assert pinned_count(BenchConfig(proposals=800)) == 800
    assert pinned_count(BenchConfig(proposals=800, prompts="matched", matched_points=256)) == 200
    assert pinned_count(BenchConfig(proposals=0)) == 0


def test_plan_arithmetic():
    plan = make_plan(1_000_000, 8, 20.0)
    assert plan.gpu_hours == pytest.approx(1_000_000 / 20 / 3600)
    assert plan.wall_hours == pytest.approx(plan.gpu_hours / 8)


def test_image_size_and_settings_are_checked():
    assert parse_image_size("1152x864") == (1152, 864)
    with pytest.raises(LabelerError, match="--image-size"):
        parse_image_size("1152")
    with pytest.raises(LabelerError, match="--dtype"):
        BenchConfig(dtype="int8").validate()


def bench_args(tmp_path, *extra):
    return ["bench", "--images", "4", "--image-size", "320x256", "--batch-size", "2", "--points-per-side", "4",
            "--proposals", "12", "--device", "cpu", "--json", str(tmp_path / "bench.json"), *extra]


def test_bench_without_ray_times_every_stage(run_cli, tmp_path):
    result = run_cli(*bench_args(tmp_path, "--no-ray", "--plan", "1000", "--gpus", "2", "--check",
                                 "--top-operators", "5"))
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["stages"]) == set(STAGE_TITLES)
    assert all(report["stages"][name] > 0 for name in MODEL_STAGES)
    assert report["proposals_per_image"] == 12  # pinned, whatever the random weights keep
    assert report["model_ms_per_image"] == pytest.approx(sum(report["stages"][n] for n in MODEL_STAGES), abs=1e-2)
    assert report["pipeline"] is None
    assert report["plan"]["images"] == 1000 and report["plan"]["gpus"] == 2
    assert report["plan"]["gpu_hours"] == pytest.approx(1000 / report["model_images_per_second"] / 3600, rel=1e-3)
    for name in ("sam2_encoder", "sam2_decoder", "dinov2"):
        assert report["flops_per_image"][name] > 0 and report["bytes_written_per_image"][name] > 0
    assert set(report["host"]) == set(STAGE_TITLES)
    assert report["host"]["sam2_decoder"]["operators"] > 0 and report["host"]["decode"]["operators"] == 0
    outside = sum(split["host_ms"] for name, split in report["host"].items()
                  if name not in ("sam2_encoder", "sam2_decoder", "dinov2"))
    assert report["host_ms_outside_networks"] == pytest.approx(outside, abs=1e-2) and outside > 0
    assert "model stages" in result.stdout and "plan: 1,000 images" in result.stdout
    assert "host CPU work outside the networks" in result.stdout
    # --check: fp32 on the CPU against plain fp32 actors with the same seeded weights is exact
    agreement = report["agreement"]
    assert agreement["same_labels"] and agreement["images"] == 2 and agreement["plain_detections"] > 0
    assert (agreement["min_mask_iou"], agreement["max_score_diff"]) == (1.0, 0.0)
    operators = report["top_operators"]
    assert len(operators) == 5 and [op["ms"] for op in operators] == sorted((op["ms"] for op in operators), reverse=True)
    assert "top operators by device time" in result.stdout


def test_bench_matched_prompts(run_cli, tmp_path):
    result = run_cli(*bench_args(tmp_path, "--no-ray", "--prompts", "matched", "--matched-points", "8"))
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["proposals_per_image"] == 6  # 12 of 16 grid points -> 6 of 8 matched points
    assert report["settings"]["prompts"] == "matched (8 points)"


def test_bench_through_ray_runs_the_pipeline(run_cli, tmp_path):
    result = run_cli(*bench_args(tmp_path, "--proposals", "0"))
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["pipeline"]["images"] == 4 and report["pipeline"]["images_per_second"] > 0
    assert report["settings"]["proposals"] == "not pinned"


def run_without_ray(*args: str) -> subprocess.CompletedProcess:
    """``labeler ARGS`` in a fresh interpreter where ``import ray`` fails, as on the lent GPU machines."""
    code = "import sys; sys.modules['ray'] = None; from labeler.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_bench_runs_where_ray_is_not_installed(tmp_path):
    done = run_without_ray(*bench_args(tmp_path, "--no-ray"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "bench.json").read_text())["pipeline"] is None
    refused = run_without_ray(*bench_args(tmp_path))
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: Ray is not installed here: add --no-ray to time the stages without the pipeline"
