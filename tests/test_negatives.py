"""Negative references ("not this"): the reference code's rule on hand-made embeddings and against an
independent reading of its _compute_sim_global_avg_with_neg; the bank and build-bank carry them; off when none."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from labeler.bank.build import build_bank
from labeler.bank.file import bank_from_bytes
from labeler.errors import LabelerError
from labeler.method.scoring import NegativePrototypes, classify
from labeler.synthetic import generate_dataset

from .conftest import load_json

PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0 along x, class 1 along y
NOT_CLASS_0 = NegativePrototypes(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))


def test_hand_worked_numbers():
    """e = (0.6, 0.8): s = (0.6, 0.8), its cosine with class 0's negative is 1, so class 0 gets
    0.6 * exp(-(1 - 0.6) / 0.8) and class 1 (no negative) keeps 0.8. e = (0.8, 0.6): 0.8 * exp(-(0.96 - 0.8)
    / 0.8) = 0.655 still beats 0.6. e = (1, 0): the negative is less similar than the class, no decay. On the
    diagonal both classes tie at 0.7071 until the negative (cosine 0.98995) moves the label to class 1."""
    diagonal = 2 ** -0.5
    embeddings = torch.tensor([[0.6, 0.8], [0.8, 0.6], [1.0, 0.0], [diagonal, diagonal]])
    labels, scores = classify(embeddings, PROTOTYPES, NOT_CLASS_0)
    assert labels.tolist() == [1, 0, 0, 1]
    assert scores.tolist() == pytest.approx([0.8, 0.8 * math.exp(-0.2), 1.0, diagonal], abs=1e-6)
    plain_labels, plain_scores = classify(embeddings, PROTOTYPES)
    assert plain_labels.tolist() == [1, 0, 0, 0] and plain_scores[1] == pytest.approx(0.8)


def reference_rule(embeddings, prototypes, negatives_per_class, sigma=0.8):
    """An independent reading of the reference's _compute_sim_global_avg_with_neg: negatives as a
    [classes, instances, dim] tensor padded with zero vectors (normalised to zero), max over instances."""
    classes, dim = prototypes.shape
    length = max(len(n) for n in negatives_per_class)
    memory = torch.zeros(classes, length, dim)
    for c, rows in enumerate(negatives_per_class):
        if rows:
            memory[c, : len(rows)] = torch.stack(rows)
    memory = F.normalize(memory, p=2, dim=-1).reshape(-1, dim)
    sim_pos = (embeddings @ F.normalize(prototypes, dim=-1).t()).clamp(min=0.0)
    sim_neg = (embeddings @ memory.t()).clamp(min=0.0).reshape(embeddings.shape[0], classes, -1).max(dim=-1)[0]
    final = sim_pos * torch.exp(-1.0 * (sim_neg - sim_pos).clamp(min=0.0) / sigma)
    scores, labels = final.max(dim=1)
    return labels, scores


def test_against_an_independent_reading_of_the_reference():
    generator = torch.Generator().manual_seed(0)
    prototypes = F.normalize(torch.randn(4, 16, generator=generator), dim=1)
    rows = [[torch.randn(16, generator=generator) for _ in range(n)] for n in (2, 0, 3, 1)]  # class 1 has none
    flat = torch.stack([r for class_rows in rows for r in class_rows])
    classes = torch.tensor([c for c, class_rows in enumerate(rows) for _ in class_rows])
    embeddings = F.normalize(torch.randn(200, 16, generator=generator), dim=1)
    ours = classify(embeddings, prototypes, NegativePrototypes(F.normalize(flat, dim=1), classes))
    theirs = reference_rule(embeddings, prototypes, rows)
    assert torch.equal(ours[0], theirs[0])
    assert torch.allclose(ours[1], theirs[1], atol=1e-6)
    assert not torch.equal(ours[0], classify(embeddings, prototypes)[0])  # the negatives changed labels


def test_build_bank_pools_negatives_apart_and_the_file_round_trips(tmp_path):
    refs = generate_dataset(tmp_path / "refs", 4, seed=3)
    document = load_json(refs)
    first, second = sorted(c["id"] for c in document["categories"])[:2]
    donor = next(a for a in document["annotations"] if a["category_id"] == second)
    document["annotations"].append(dict(donor, id=9_999, category_id=first, negative=True))
    refs.write_text(json.dumps(document))
    bank = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu")
    assert bank.negative_annotation_ids == [9_999] and 9_999 not in bank.annotation_ids
    assert bank.negatives_per_class()[first] == 1 and bank.has_negatives
    loaded = bank_from_bytes(bank.to_bytes())
    assert torch.equal(loaded.negative_prototypes, bank.negative_prototypes)
    assert loaded.negative_class.tolist() == [sorted(c.id for c in bank.categories).index(first)]
    plain = bank.without_negatives()
    assert not plain.has_negatives and plain.content_hash != bank.content_hash
    document["annotations"].pop()
    refs.write_text(json.dumps(document))
    rebuilt = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu")
    assert rebuilt.content_hash == plain.content_hash  # a bank without negatives is the file it always was
    assert "negative_prototypes" not in rebuilt.to_bytes()[:4096].decode("latin-1")


def test_a_negative_flag_that_is_not_a_boolean_is_named(tmp_path):
    refs = generate_dataset(tmp_path / "refs", 2, seed=3)
    document = load_json(refs)
    document["annotations"][0]["negative"] = "yes"
    refs.write_text(json.dumps(document))
    with pytest.raises(LabelerError, match=r"annotations.json: annotation \d+: negative must be true or false, got 'yes'"):
        build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu")
