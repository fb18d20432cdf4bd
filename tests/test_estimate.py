"""labeler estimate: folds that never leak, thresholds that meet the target precision exactly where they
can, and a report whose AP is COCOeval's on the pooled held-out detections."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labeler.bank.file import load_bank
from labeler.io.coco import Category
from labeler.label_filter import parse_label_filter
from labeler.quality.estimate import _fold_documents, fold_of_images, run_estimate
from labeler.quality.estimate_config import EstimateConfig
from labeler.quality.matching import BACKGROUND, MISSED, choose_threshold, confusion_counts, match_image
from labeler.run.config import RunConfig
from labeler.synthetic import generate_dataset

from .conftest import load_json


def test_folds_split_images_and_never_hand_a_held_out_annotation_to_a_bank():
    document = {"images": [{"id": i} for i in range(1, 8)],
                "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": 1 + k % 2} for i in range(1, 8)
                                for k in range(2)],
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    fold = fold_of_images(list(range(1, 8)), 3, seed=4)
    assert sorted(fold) == list(range(1, 8)) and sorted(np.bincount(list(fold.values()))) == [2, 2, 3]
    assert fold == fold_of_images(list(range(1, 8)), 3, seed=4) and fold != fold_of_images(list(range(1, 8)), 3, 5)
    for k in range(3):
        train, heldout = _fold_documents(document, fold, k, [])
        held = {i["id"] for i in heldout["images"]}
        assert held == {i for i, f in fold.items() if f == k}
        assert not {a["image_id"] for a in train["annotations"]} & held
        assert {a["id"] for a in train["annotations"]} | {a["id"] for a in heldout["annotations"]} == {
            a["id"] for a in document["annotations"]}
    assert set(fold_of_images([5, 6], 10, 0).values()) == {0, 1}  # fewer images: leave one image out


def test_the_threshold_meets_the_target_precision_exactly_where_a_threshold_can():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    hits = np.array([True, True, False, True, False])  # precision 1, 1, 2/3, 3/4, 3/5 at each cut
    chosen = choose_threshold(scores, hits, truths=4, target=0.75)
    assert (chosen.threshold, chosen.precision, chosen.recall, chosen.reached) == (0.6, 0.75, 0.75, True)
    assert choose_threshold(scores, hits, 4, 0.8).threshold == 0.8  # 3/4 < 0.8: the cut before the miss
    tied = choose_threshold(np.array([0.9, 0.7, 0.7]), np.array([True, True, False]), 2, 0.75)
    assert (tied.threshold, tied.precision) == (0.9, 1.0)  # no cut between equal scores
    unreachable = choose_threshold(np.array([0.9, 0.8, 0.4]), np.array([False, True, False]), 3, 0.9)
    assert (unreachable.threshold, unreachable.precision, unreachable.reached) == (0.8, 0.5, False)
    none_right = choose_threshold(np.array([0.9, 0.4]), np.array([False, False]), 3, 0.9)
    assert none_right.threshold > 0.9 and (none_right.precision, none_right.recall) == (0.0, 0.0)  # keeps none
    assert choose_threshold(np.zeros(0), np.zeros(0, bool), 3, 0.9) is None


def square(category_id, score, x, y, size=10):
    return {"category_id": category_id, "score": score, "bbox": [x, y, size, size],
            "segmentation": [[x, y, x + size, y, x + size, y + size, x, y + size]]}


def test_matches_and_confusion_on_hand_made_instances():
    truths = [square(1, None, 0, 0), square(2, None, 20, 20), square(1, None, 40, 0)]
    detections = [square(1, 0.9, 0, 0), square(1, 0.8, 1, 0), square(1, 0.7, 20, 20), square(2, 0.6, 60, 60)]
    assert match_image(detections, truths, 80, 80).tolist() == [True, False, False, False]  # one match per truth
    names = {1: "a", 2: "b"}
    assert confusion_counts(detections, truths, 80, 80, names) == {
        ("a", "a"): 1, ("b", "a"): 1, ("a", MISSED): 1, (BACKGROUND, "a"): 1, (BACKGROUND, "b"): 1}


@pytest.fixture(scope="module")
def estimate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("estimate")
    refs = generate_dataset(folder / "refs", 6, seed=3)
    result = run_estimate(EstimateConfig(
        refs=str(refs), images=str(refs.parent / "images"), out=str(folder / "out"), dinov2="random:tiny",
        folds=3, seed=1, target_precision=0.5, device="cpu",
        run=RunConfig(bank="", images="", out="", sam2="random:tiny", points_per_side=4, batch_size=4,
                      max_error_rate=1.0)))
    return refs, folder / "out", result


def test_no_fold_bank_holds_an_annotation_of_its_held_out_images(estimate):
    refs, out, result = estimate
    everything = load_json(refs)
    labelled = []
    for k in range(3):
        bank = load_bank(str(out / "folds" / str(k) / "bank.safetensors"))
        heldout = load_json(out / "folds" / str(k) / "heldout.json")
        held_ids = {i["id"] for i in heldout["images"]}
        held_annotations = {a["id"] for a in everything["annotations"] if a["image_id"] in held_ids}
        assert bank.annotation_ids and not set(bank.annotation_ids) & held_annotations
        labelled += sorted(held_ids)
    assert sorted(labelled) == sorted(i["id"] for i in everything["images"])  # each reference image once


def test_the_report_ap_is_cocoeval_of_the_pooled_held_out_detections(estimate):
    refs, out, result = estimate
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(refs))
        detections = truth.loadRes(load_json(out / "predictions.json")["annotations"])
        direct = COCOeval(truth, detections, result.iou_type)
        direct.params.imgIds = sorted(truth.getImgIds())
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert result.pooled.metrics[result.iou_type]["AP"] == pytest.approx(direct.stats[0], abs=1e-12)
    assert result.pooled.metrics[result.iou_type]["AP50"] == pytest.approx(direct.stats[1], abs=1e-12)
    report = json.loads((out / "report.json").read_text())
    assert len(report["folds"]) == 3 and report["pooled"]["metrics"] == result.pooled.metrics


def test_the_thresholds_file_is_what_run_export_and_visualize_take(estimate):
    refs, out, result = estimate
    categories = [Category(c["id"], c["name"]) for c in load_json(refs)["categories"]]
    document = load_json(out / "thresholds.json")
    chosen = parse_label_filter(str(out / "thresholds.json"), None, categories)
    for name, choice in result.thresholds.items():
        category_id = next(c.id for c in categories if c.name == name)
        expected = choice.threshold if choice else 0.5
        assert chosen.threshold(category_id) == pytest.approx(expected, abs=1e-6)
        assert (document["measured"][name] is None) == (choice is None)
    assert (out / "estimate.png").stat().st_size > 10_000
    text = (out / "report.txt").read_text()
    assert "built without it (3 folds)" in text and "Thresholds for precision 0.5" in text


def test_a_fold_with_no_reference_outside_it_is_noted_not_fatal(tmp_path):
    """Issue 26, item 9: a fold with nothing to build a bank from aborted the whole estimate, naming an internal
    file (folds/k/refs.json)."""
    refs = generate_dataset(tmp_path / "refs", 2, seed=3)
    document = load_json(refs)
    empty = document["images"][1]["id"]  # every annotation on the first image: its fold has no bank to build
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != empty]
    refs.write_text(json.dumps(document))
    result = run_estimate(EstimateConfig(
        refs=str(refs), images=str(refs.parent / "images"), out=str(tmp_path / "out"), dinov2="random:tiny",
        folds=2, seed=1, target_precision=0.5, device="cpu",
        run=RunConfig(bank="", images="", out="", sam2="random:tiny", points_per_side=4, batch_size=4,
                      max_error_rate=1.0)))
    assert any("no reference annotation outside it" in note for note in result.notes)
    assert len(result.per_fold) == 2 and (tmp_path / "out" / "report.txt").exists()
    assert "no reference annotation outside it" in (tmp_path / "out" / "report.txt").read_text()


def test_negative_references_are_kept_out_of_the_truth_and_their_effect_is_reported_per_class(tmp_path):
    """Two instances of one class are also given as negatives ("not this") of another: each fold's bank holds
    those of its training images, the held-out truth never does, and the report gives that class's AP with
    and without them, the second from the same proposals rescored."""
    refs = generate_dataset(tmp_path / "refs", 4, seed=3, objects_per_image=(2, 3))
    document = load_json(refs)
    names = {c["id"]: c["name"] for c in document["categories"]}
    first, second = sorted(names)[:2]
    donors = [a for a in document["annotations"] if a["category_id"] == second][:2]
    negatives = [dict(a, id=10_000 + k, category_id=first, negative=True) for k, a in enumerate(donors)]
    document["annotations"] += negatives
    refs.write_text(json.dumps(document))
    result = run_estimate(EstimateConfig(
        refs=str(refs), images=str(refs.parent / "images"), out=str(tmp_path / "out"), dinov2="random:tiny",
        folds=2, seed=1, target_precision=0.5, device="cpu",
        run=RunConfig(bank="", images="", out="", sam2="random:tiny", points_per_side=4, batch_size=4,
                      max_error_rate=1.0)))
    held_negatives = 0
    for k in range(2):
        fold = tmp_path / "out" / "folds" / str(k)
        bank = load_bank(str(fold / "bank.safetensors"))
        held = {i["id"] for i in load_json(fold / "heldout.json")["images"]}
        assert not {a["id"] for a in load_json(fold / "heldout.json")["annotations"]} & {a["id"] for a in negatives}
        expected = sorted(a["id"] for a in negatives if a["image_id"] not in held)
        assert sorted(bank.negative_annotation_ids) == expected
        assert not set(bank.annotation_ids) & {a["id"] for a in negatives}
        held_negatives += len(negatives) - len(expected)
        assert (fold / "labels-without-negatives" / "run.json").exists()
    assert held_negatives == len(negatives)  # each negative was held out once
    assert result.negative_classes == [names[first]]
    effect = result.negative_effect()
    assert list(effect) == [names[first]] and all(-1 <= value <= 1 for value in effect[names[first]])
    text = (tmp_path / "out" / "report.txt").read_text()
    assert f"Negative references, AP per class with them -> without (the same proposals, rescored): {names[first]}" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["negatives"][names[first]].keys() == {
        "ap_with", "ap_without"}
    assert any("negative references" in note for note in result.notes)
