"""labeler eval equals a direct pycocotools COCOeval, to the last digit."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labeler.errors import LabelerError
from labeler.outdir.merged_coco import write_coco
from labeler.quality.evaluate import METRICS, evaluate
from labeler.run.manifest import run_categories
from labeler.synthetic import generate_dataset

from .conftest import fake_run, load_json, write_json


def direct(gt_path, predictions_path, iou_type, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(json.loads(predictions_path.read_text())["annotations"])
        evaluator = COCOeval(gt, dt, iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture
def imperfect_run(tmp_path):
    """Predictions: the ground truth with some instances dropped, others duplicated
    with a shift, and varied scores; written out as a real run would (coco.json)."""
    gt = generate_dataset(tmp_path / "gt", 6, seed=21)
    document = load_json(gt)
    scores = {a["id"]: float(s) for a, s in zip(document["annotations"], np.linspace(0.95, 0.1, len(document["annotations"])))}
    noisy = dict(document)
    annotations = []
    for k, annotation in enumerate(document["annotations"]):
        if k % 5 == 1:
            continue  # missed
        annotations.append(annotation)
        if k % 4 == 0:  # a shifted duplicate: a false positive at IoU .5 for small shapes
            shifted = dict(annotation, id=10_000 + k, segmentation=[[v + 12 for v in annotation["segmentation"][0]]])
            annotations.append(shifted)
            scores[shifted["id"]] = 0.5
    noisy["annotations"] = annotations
    noisy_path = write_json(tmp_path / "noisy.json", noisy)
    run = fake_run(tmp_path / "run", noisy_path, scores)
    (tmp_path / "images").symlink_to(gt.parent / "images")
    write_coco(str(run), run_categories(str(run)))
    return gt, run


def test_equals_direct_cocoeval(imperfect_run):
    gt, run = imperfect_run
    report = evaluate(str(run), str(gt))
    for iou_type in ("bbox", "segm"):
        stats = direct(gt, run / "coco.json", iou_type)
        assert [report.metrics[iou_type][name] for name in METRICS] == [float(stats[i]) for i in METRICS.values()]
        assert 0 < report.metrics[iou_type]["AP"] < 1
    assert report.images == {"ground_truth": 6, "predicted": 6, "evaluated": 6, "gt_without_prediction": 0,
                             "prediction_without_gt": 0}


def test_a_run_without_merged_coco_is_evaluated_from_its_coco_shards(imperfect_run, tmp_path):
    import shutil

    gt, run = imperfect_run
    sharded = tmp_path / "sharded-run"
    shutil.copytree(run, sharded, ignore=shutil.ignore_patterns("coco.json"))
    assert len(list((sharded / "coco").iterdir())) == 2
    assert evaluate(str(sharded), str(gt)).metrics == evaluate(str(run), str(gt)).metrics


def test_per_class_ap_equals_single_category_cocoeval(imperfect_run):
    gt, run = imperfect_run
    report = evaluate(str(run), str(gt))
    for category in report.categories:
        alone = direct(gt, run / "coco.json", "segm", [category["id"]])
        assert report.per_class["segm"][category["name"]] == pytest.approx(float(alone[0]), abs=1e-12)


def test_category_subset_by_ids_and_names(imperfect_run):
    gt, run = imperfect_run
    report = evaluate(str(run), str(gt), categories="disc, 3")
    assert [c["name"] for c in report.categories] == ["disc", "square"]
    stats = direct(gt, run / "coco.json", "bbox", [1, 3])
    assert report.metrics["bbox"]["AP"] == float(stats[0])
    with pytest.raises(LabelerError, match="'boat' is neither a category id nor a name"):
        evaluate(str(run), str(gt), categories="boat")


def test_mismatched_images_and_categories_are_reported(imperfect_run, tmp_path):
    gt, run = imperfect_run
    predictions = load_json(run / "coco.json")
    dropped = predictions["images"].pop()["id"]
    predictions["annotations"] = [a for a in predictions["annotations"] if a["image_id"] != dropped]
    stranger = dict(predictions["annotations"][0], image_id=777, category_id=55)
    predictions["annotations"].append(stranger)
    predictions["images"].append({"id": 777, "file_name": "x", "width": 10, "height": 10})
    path = write_json(tmp_path / "preds.json", predictions)
    report = evaluate(str(path), str(gt))
    assert report.images["gt_without_prediction"] == 1 and report.images["prediction_without_gt"] == 1
    assert report.images["evaluated"] == 5
    assert any("[55]" in note for note in report.notes)
    text = report.table()
    assert "1 ground-truth images without predictions, 1 predicted images not in the ground truth" in text


def test_cli_prints_and_saves(imperfect_run, tmp_path, run_cli):
    gt, run = imperfect_run
    result = run_cli("eval", "--pred", run, "--gt", gt, "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.stderr
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"]["segm"]["AP"] == evaluate(str(run), str(gt)).metrics["segm"]["AP"]
    assert "AR@100" in result.stdout and "disc" in result.stdout
    missing = run_cli("eval", "--pred", tmp_path / "nothing", "--gt", gt)
    assert missing.exit_code == 2 and "--pred" in missing.stderr and "no such file or folder" in missing.stderr
    (tmp_path / "nothing").mkdir()
    empty = run_cli("eval", "--pred", tmp_path / "nothing", "--gt", gt)
    assert empty.exit_code == 2 and "no coco.json and no COCO shards" in empty.stderr
