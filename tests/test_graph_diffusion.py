"""Graph-diffusion rescoring (--merge graph-diffusion): FSOD-VFM's arithmetic on hand-made masks, worked out
by hand, and against an independent reimplementation of their graph_diffusion_ios (docs/fidelity.md)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.method.detections import merge_and_select
from labeler.method.full_size_masks import dense_full_size_masks
from labeler.method.graph_diffusion import Diffusion, diffused_ios, diffused_scores
from labeler.method.scoring import RankedProposals
from labeler.synthetic import proposal_logits


def region_logits(*regions: tuple[int, int, int, int], size: int = 8) -> torch.Tensor:
    """``[K, size, size]`` logits +5 inside each (y0, y1, x0, x1) region, -5 outside: at the same size the
    full-size masks are exactly the regions."""
    logits = torch.full((len(regions), size, size), -5.0)
    for k, (y0, y1, x0, x1) in enumerate(regions):
        logits[k, y0:y1, x0:x1] = 5.0
    return logits


def ranked(count: int, labels: list[int], scores: list[float]) -> RankedProposals:
    return RankedProposals(index=torch.arange(count), labels=torch.tensor(labels), scores=torch.tensor(scores),
                           embeddings=torch.eye(count, 4))


def pi_of(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    masks = dense_full_size_masks(logits, torch.tensor(labels), tuple(logits.shape[1:]))
    return diffused_ios(masks.intersections, masks.areas, torch.tensor(labels), Diffusion())


def test_a_mask_inside_a_higher_ranked_one_worked_by_hand():
    """A (4 px) then B (8 px, holding A): ios_BA = 4 / 8. From pi = (1/2, 1/2): step 1 gives
    (0, 0.3 * 0.25 + 0.7 * 0.5) = (0, 0.425), step 2 (0, 0.35), step 3 the same: stop. B's score * sqrt(0.65)."""
    logits = region_logits((0, 2, 0, 2), (0, 2, 0, 4))
    assert pi_of(logits, [0, 0]).tolist() == pytest.approx([0.0, 0.35], abs=1e-7)
    chosen = merge_and_select(ranked(2, [0, 0], [0.9, 0.8]), logits, (8, 8), 100, 0.0,
                              diffusion=Diffusion())
    assert chosen.scores.tolist() == pytest.approx([0.9, 0.8 * 0.65 ** 0.5], abs=1e-6)


def test_three_masks_worked_by_hand():
    """A (4 px), B (8 px, holds A), C (2 px, inside both): ios rows (0, 0, 0), (1/2, 0, 0), (1, 1, 0);
    v = (0, 1/2, 1). From 1/3 each: (0, 0.4, 0.9), (0, 0.35, 0.82), (0, 0.35, 0.805), then unchanged."""
    logits = region_logits((0, 2, 0, 2), (0, 2, 0, 4), (0, 1, 0, 2))
    assert pi_of(logits, [1, 1, 1]).tolist() == pytest.approx([0.0, 0.35, 0.805], abs=1e-6)


def test_pi_past_one_sets_the_score_to_zero_and_classes_stay_apart():
    """Four identical masks: the walk's matrix is not normalised (FSOD-VFM divides rows by a boolean), so the
    fourth reaches 0.3 * (0 + 0.7 + 0.91) + 0.7 = 1.183 and its score goes to 0. A fifth mask, the same
    pixels in another class, is alone in its class: 0."""
    same = (0, 4, 0, 4)
    logits = region_logits(same, same, same, same, same)
    pi = pi_of(logits, [0, 0, 0, 0, 1])
    assert pi.tolist() == pytest.approx([0.0, 0.7, 0.91, 1.183, 0.0], abs=1e-6)
    scores = diffused_scores(torch.full((5,), 0.5), pi, 0.5)
    assert scores.tolist() == pytest.approx([0.5, 0.5 * 0.3 ** 0.5, 0.5 * 0.09 ** 0.5, 0.0, 0.5], abs=1e-6)


def test_one_mask_and_disjoint_masks_keep_their_scores():
    assert pi_of(region_logits((0, 2, 0, 2)), [0]).tolist() == [0.0]
    assert pi_of(region_logits((0, 2, 0, 2), (4, 6, 4, 6)), [0, 0]).tolist() == [0.0, 0.0]  # rows summing to 0


def fsod_vfm_pi(masks: np.ndarray, labels: np.ndarray, steps=30, alpha=0.3, tol=1e-6) -> np.ndarray:
    """An independent reading of FSOD-VFM's graph_diffusion_ios, in numpy float32, loop by loop."""
    count = masks.shape[0]
    flat = masks.reshape(count, -1).astype(np.float32)
    out = np.zeros(count, np.float32)
    if count == 1:
        return out
    for label in range(int(labels.max()) + 1):
        rows = np.flatnonzero(labels == label)
        if rows.size == 0:
            continue
        chosen = flat[rows]
        positives = np.maximum(chosen.sum(axis=1), np.float32(1e-6))
        inter = np.zeros((rows.size, rows.size), np.float32)
        for i in range(rows.size):
            for j in range(i):  # the diagonal zeroed, the lower triangle kept
                inter[i, j] = np.float32((chosen[i] * chosen[j]).sum())
        ios = inter / positives[:, None]
        personal = ios.max(axis=1)
        walk = np.where((ios.sum(axis=1) > 1e-10)[:, None], ios / np.float32(1.0), np.float32(0.0))
        pi = np.full(rows.size, np.float32(1.0) / np.float32(rows.size), np.float32)
        for _ in range(steps):
            previous = pi
            pi = (np.float32(alpha) * (walk @ pi) + np.float32(1 - alpha) * personal).astype(np.float32)
            if np.linalg.norm(pi - previous) < tol:
                break
        out[rows] = pi
    return out


@pytest.mark.parametrize("seed, classes", [(0, 1), (1, 3), (2, 2)])
def test_against_an_independent_reimplementation(seed, classes):
    count = 60
    logits = proposal_logits(count, (40, 48), seed, regions=8)
    labels = torch.randint(0, classes, (count,), generator=torch.Generator().manual_seed(seed))
    ours = pi_of(logits, labels.tolist())  # at the logits' own size the full-size masks are logits > 0
    reference = fsod_vfm_pi((logits > 0).numpy(), labels.numpy())
    assert (reference > 0).sum() > count // 3
    assert np.allclose(ours.numpy(), reference, atol=2e-6, rtol=0)


def test_both_overlap_paths_give_the_same_diffused_detections():
    count = 120
    generator = torch.Generator().manual_seed(7)
    logits = proposal_logits(count, (64, 64), 7, regions=12)
    proposals = RankedProposals(index=torch.arange(count), labels=torch.randint(0, 3, (count,), generator=generator),
                                scores=0.3 + 0.6 * torch.rand(count, generator=generator),
                                embeddings=F.normalize(torch.randn(count, 8, generator=generator), dim=1))
    chosen = [merge_and_select(proposals, logits, (90, 110), 100, 0.0, overlaps=path, diffusion=Diffusion())
              for path in ("dense", "rle")]
    for name in ("index", "labels", "scores", "boxes", "areas"):
        assert torch.equal(getattr(chosen[0], name), getattr(chosen[1], name)), name
    soft = merge_and_select(proposals, logits, (90, 110), 100, 0.0)
    assert not torch.equal(soft.scores, chosen[0].scores)
