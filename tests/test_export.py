"""Exports: YOLO polygons round trip, COCO loads in pycocotools, semantic maps match the masks."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from labeler.errors import LabelerError
from labeler.export import export, mask_to_polygon, polygon_to_mask
from labeler.io.masks import segmentation_to_mask
from labeler.io.rle import decode_masks
from labeler.io.run_output import iter_label_rows
from labeler.synthetic import generate_dataset

from .conftest import fake_run, load_json

#: Tracing a mask's outline through its boundary pixel centres and filling it
#: back with cv2.fillPoly loses or gains at most a thin rim: for the 30-90 px
#: shapes of the generated set, IoU stays above this bound.
YOLO_IOU_BOUND = 0.9


def iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


@pytest.fixture
def gt_and_run(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 4, seed=8)
    document = load_json(gt)
    scores = {a["id"]: 0.2 + 0.1 * (a["id"] % 7) for a in document["annotations"]}
    run = fake_run(tmp_path / "run", gt, scores, extra_rows=[(999, "/nowhere.png", 0, 0, "error", "read failed")])
    return gt, run, scores


def test_yolo_round_trip(tmp_path, gt_and_run):
    gt, run, _ = gt_and_run
    result = export(str(run), "yolo", str(tmp_path / "yolo"))
    document = load_json(gt)
    names = [c["name"] for c in document["categories"]]
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text(encoding="utf-8"))
    assert data["names"] == dict(enumerate(names)) and data["train"] == "images"
    assert result.images == 4 and result.instances == len(document["annotations"])
    for image in document["images"]:
        stem = f"{image['id']}_{image['file_name'].split('/')[-1].rsplit('.', 1)[0]}"
        linked = tmp_path / "yolo" / "images" / f"{stem}.png"
        assert linked.is_symlink() and linked.resolve() == (gt.parent / "images" / image["file_name"]).resolve()
        lines = (tmp_path / "yolo" / "labels" / f"{stem}.txt").read_text().splitlines()
        truths = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        assert len(lines) == len(truths)
        for line, truth in zip(lines, truths):
            values = line.split()
            assert int(values[0]) == [c["id"] for c in document["categories"]].index(truth["category_id"])
            points = np.array(values[1:], dtype=float).reshape(-1, 2) * [image["width"], image["height"]]
            assert (np.array(values[1:], dtype=float) <= 1).all()
            original = segmentation_to_mask(truth["segmentation"], image["height"], image["width"], where="t")
            assert iou(polygon_to_mask(points, image["height"], image["width"]), original) > YOLO_IOU_BOUND


def test_yolo_polygon_of_several_parts_and_a_hole():
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:20, 5:20] = 1
    mask[25:35, 40:55] = 1
    mask[10:14, 10:14] = 0  # a hole: filled in YOLO
    polygon = mask_to_polygon(mask)
    back = polygon_to_mask(polygon, 40, 60)
    filled = mask.copy()
    filled[10:14, 10:14] = 1
    assert back[30, 47] and back[12, 12] and iou(back, filled) > 0.9
    assert mask_to_polygon(np.zeros((5, 5), dtype=np.uint8)).shape == (0, 2)


def test_coco_export_loads_and_keeps_only_confident_detections(tmp_path, gt_and_run):
    _, run, scores = gt_and_run
    result = export(str(run), "coco", str(tmp_path / "coco"), min_score=0.5)
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert len(coco.getAnnIds()) == result.instances == sum(s >= 0.5 for s in scores.values())
    assert len(coco.getImgIds()) == 4  # the error row is not an image of the training set
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert "score" not in annotation and coco.annToMask(annotation).sum() == annotation["area"]


def test_semantic_maps_follow_the_highest_score(tmp_path, gt_and_run):
    gt, run, scores = gt_and_run
    export(str(run), "semantic", str(tmp_path / "sem"))
    legend = json.loads((tmp_path / "sem" / "legend.json").read_text())
    value_of = {entry["category_id"]: int(value) for value, entry in legend.items()}
    assert legend["0"]["name"] == "background" and (tmp_path / "sem" / "legend.png").exists()
    for row in iter_label_rows(str(run)):
        if row["status"] != "ok":
            continue
        picture = Image.open(tmp_path / "sem" / f"{row['image_id']}.png")
        assert picture.mode == "P"
        classes = np.asarray(picture)
        expected = np.zeros_like(classes)
        best = np.full(classes.shape, -1.0)
        for detection in row["detections"]:
            mask = decode_masks([detection["rle"]], row["height"], row["width"])[0].astype(bool)
            take = mask & (detection["score"] > best)
            expected[take] = value_of[detection["category_id"]]
            best[take] = detection["score"]
        assert np.array_equal(classes, expected)


def test_overlapping_detections_go_to_the_higher_score(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 1, seed=0, objects_per_image=(1, 1))
    document = load_json(gt)
    twin = dict(document["annotations"][0], id=99, category_id=document["categories"][1]["id"])
    document["annotations"].append(twin)
    (tmp_path / "gt2.json").write_text(json.dumps(document))
    (tmp_path / "images").symlink_to(gt.parent / "images")
    run = fake_run(tmp_path / "run", tmp_path / "gt2.json", {document["annotations"][0]["id"]: 0.3, 99: 0.8})
    export(str(run), "semantic", str(tmp_path / "sem"))
    classes = np.asarray(Image.open(tmp_path / "sem" / f"{document['images'][0]['id']}.png"))
    assert set(np.unique(classes)) == {0, 2}  # the twin (second category, score 0.8) wins everywhere


def test_unknown_format(tmp_path, gt_and_run):
    with pytest.raises(LabelerError, match="--format must be one of coco, yolo, semantic"):
        export(str(gt_and_run[1]), "voc", str(tmp_path / "x"))


def test_yolo_class_names_keep_every_character(tmp_path, gt_and_run):
    """Emoji became lone surrogates ("\\ud83d\\udea2") in data.yaml, which YAML readers reject."""
    _, run, _ = gt_and_run
    manifest = load_json(run / "run.json")
    names = ["boat 🚢", "naïve \"quoted\" 'name'", "ключ: value"]
    for category, name in zip(manifest["categories"], names):
        category["name"] = name
    (run / "run.json").write_text(json.dumps(manifest))
    export(str(run), "yolo", str(tmp_path / "yolo"))
    text = (tmp_path / "yolo" / "data.yaml").read_text(encoding="utf-8")
    assert "🚢" in text and "\\ud83d" not in text
    assert list(yaml.safe_load(text)["names"].values()) == [c["name"] for c in manifest["categories"]]
