"""Exports: YOLO polygons round trip, COCO loads in pycocotools, semantic maps match the masks."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from labeler.errors import LabelerError
from labeler.export.training_sets import export, mask_to_polygon, split_of
from labeler.io.masks import segmentation_to_mask
from labeler.io.rle import decode_masks
from labeler.outdir.shards import iter_label_rows
from labeler.synthetic import generate_dataset

from .conftest import fake_run, load_json


def polygon_to_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon as Ultralytics does (``cv2.fillPoly``): ``[H, W]`` uint8."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(polygon):
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask

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
    run = fake_run(tmp_path / "run", gt, scores, error_rows=[(999, "/nowhere.png", "read failed")])
    return gt, run, scores


def mask_area(document, annotation):
    image = next(i for i in document["images"] if i["id"] == annotation["image_id"])
    return int(segmentation_to_mask(annotation["segmentation"], image["height"], image["width"], where="t").sum())


def yolo_label_files(folder):
    return sorted(p.relative_to(folder / "labels") for p in (folder / "labels").rglob("*.txt"))


def test_yolo_round_trip(tmp_path, gt_and_run):
    gt, run, _ = gt_and_run
    result = export(str(run), "yolo", str(tmp_path / "yolo"), val_fraction=0.5, seed=3)
    folder = tmp_path / "yolo"
    document = load_json(gt)
    names = [c["name"] for c in document["categories"]]
    data = yaml.safe_load((folder / "data.yaml").read_text(encoding="utf-8"))
    assert data == {"train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    assert result.images == 4 and result.instances == len(document["annotations"])
    assert result.splits == {s: sum(split_of(i["id"], 0.5, 3) == s for i in document["images"]) for s in ("train", "val")}
    for image in document["images"]:
        split = split_of(image["id"], 0.5, 3)
        copied = folder / "images" / split / image["file_name"]  # the source's own file_name, sub-folders kept
        assert not copied.is_symlink() and copied.read_bytes() == (gt.parent / "images" / image["file_name"]).read_bytes()
        lines = (folder / "labels" / split / image["file_name"]).with_suffix(".txt").read_text().splitlines()
        truths = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        assert len(lines) == len(truths)
        for line, truth in zip(lines, truths):
            values = line.split()
            assert int(values[0]) == [c["id"] for c in document["categories"]].index(truth["category_id"])
            points = np.array(values[1:], dtype=float).reshape(-1, 2) * [image["width"], image["height"]]
            assert (np.array(values[1:], dtype=float) <= 1).all()
            original = segmentation_to_mask(truth["segmentation"], image["height"], image["width"], where="t")
            assert iou(polygon_to_mask(points, image["height"], image["width"]), original) > YOLO_IOU_BOUND


def ultralytics_labels(data_yaml, split):
    """What Ultralytics itself reads from a YOLO segmentation set: its label dicts of ``split``."""
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    return YOLODataset(img_path=data[split], data=data, task="segment", imgsz=320, augment=False).labels


@pytest.fixture
def ultralytics_home(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-config"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")


def test_a_copied_yolo_set_still_loads_in_ultralytics_after_a_move(tmp_path, gt_and_run, ultralytics_home):
    gt, run, _ = gt_and_run
    result = export(str(run), "yolo", str(tmp_path / "yolo"), val_fraction=0.5, seed=3)
    moved = tmp_path / "elsewhere" / "set"
    moved.parent.mkdir()
    shutil.move(tmp_path / "yolo", moved)
    shutil.rmtree(gt.parent / "images")  # the set no longer needs the source
    document = load_json(gt)
    order = [c["id"] for c in document["categories"]]
    loaded = 0
    for split, count in result.splits.items():
        labels = ultralytics_labels(moved / "data.yaml", split)
        assert len(labels) == count
        for label in labels:
            image = next(i for i in document["images"] if label["im_file"].endswith(i["file_name"]))
            truths = [a for a in document["annotations"] if a["image_id"] == image["id"]]
            assert Path(label["im_file"]).is_file() and str(moved) in label["im_file"]
            assert sorted(label["cls"].ravel().tolist()) == sorted(order.index(t["category_id"]) for t in truths)
            assert len(label["segments"]) == len(truths)
            loaded += 1
    assert loaded == 4


def test_a_linked_yolo_set_moves_with_its_source(tmp_path, gt_and_run, ultralytics_home):
    gt, run, _ = gt_and_run
    export(str(run), "yolo", str(tmp_path / "yolo"), images="link", val_fraction=0.0)
    linked = next((tmp_path / "yolo" / "images" / "train").rglob("*.png"))
    assert linked.is_symlink() and not os.readlink(linked).startswith("/")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.move(tmp_path, moved)  # the set and the source together, as a copy to a training machine would
    labels = ultralytics_labels(moved / "yolo" / "data.yaml", "train")
    assert len(labels) == 4 and all(Path(label["im_file"]).resolve().is_file() for label in labels)


def test_images_without_a_kept_detection_are_left_out_unless_asked(tmp_path, gt_and_run):
    gt, run, scores = gt_and_run
    document = load_json(gt)
    best = {i["id"]: max(scores[a["id"]] for a in document["annotations"] if a["image_id"] == i["id"])
            for i in document["images"]}
    threshold = sorted(best.values())[1] + 1e-6  # the two images with the lowest best score lose every detection
    kept = [i for i, score in best.items() if score >= threshold]
    result = export(str(run), "yolo", str(tmp_path / "yolo"), min_score=threshold, val_fraction=0.0)
    files = yolo_label_files(tmp_path / "yolo")
    assert result.images == len(kept) == len(files) == 2 and result.images_left_out == 2
    assert all((tmp_path / "yolo" / "labels" / f).read_text().strip() for f in files)  # no empty label file
    background = export(str(run), "yolo", str(tmp_path / "bg"), min_score=threshold, val_fraction=0.0,
                        keep_empty=True)
    empty = [f for f in yolo_label_files(tmp_path / "bg") if not (tmp_path / "bg" / "labels" / f).read_text()]
    assert background.images == 4 and background.images_left_out == 0 and len(empty) == 2
    coco = export(str(run), "coco", str(tmp_path / "coco"), min_score=threshold, val_fraction=0.0)
    images = load_json(tmp_path / "coco" / "annotations" / "instances_train.json")["images"]
    assert sorted(i["id"] for i in images) == sorted(kept) and coco.images_left_out == 2


def test_per_class_thresholds_and_a_class_subset(tmp_path, gt_and_run):
    gt, run, scores = gt_and_run
    document = load_json(gt)
    disc, square = (next(c["id"] for c in document["categories"] if c["name"] == n) for n in ("disc", "square"))
    (tmp_path / "thresholds.json").write_text(json.dumps({"default": 0.5, "classes": {"square": 0.8}}))
    for min_score in ("0.5,square=0.8", str(tmp_path / "thresholds.json"), f"0.5,{square}=0.8"):
        export(str(run), "coco", str(tmp_path / "c"), min_score=min_score, val_fraction=0.0, keep_empty=True)
        annotations = load_json(tmp_path / "c" / "annotations" / "instances_train.json")["annotations"]
        expected = [a for a in document["annotations"] if scores[a["id"]] >= (0.8 if a["category_id"] == square else 0.5)]
        assert sorted((a["image_id"], a["category_id"], a["area"]) for a in annotations) == sorted(
            (a["image_id"], a["category_id"], mask_area(document, a)) for a in expected)
    export(str(run), "coco", str(tmp_path / "d"), classes="disc", val_fraction=0.0, keep_empty=True)
    annotations = load_json(tmp_path / "d" / "annotations" / "instances_train.json")["annotations"]
    assert {a["category_id"] for a in annotations} == {disc}
    assert len(annotations) == sum(a["category_id"] == disc for a in document["annotations"])


@pytest.mark.parametrize("min_score, classes, message", [
    ("0.5,boat=0.3", None, "--min-score: no class 'boat' in this run"),
    ("1.5", None, "--min-score: 1.5 is not in \\[0, 1\\]"),
    ("0.5,0.6", None, "more than one default"),
    ("high", None, "--min-score: 'high' is not a number"),
    ("0", "disc,boat", "--classes: no class 'boat'"),
])
def test_bad_thresholds_are_named(tmp_path, gt_and_run, min_score, classes, message):
    with pytest.raises(LabelerError, match=message):
        export(str(gt_and_run[1]), "coco", str(tmp_path / "x"), min_score=min_score, classes=classes)


def test_the_split_is_seeded_and_stable_per_image():
    ids = range(2000)
    first = [split_of(i, 0.2, seed=1) for i in ids]
    assert first == [split_of(i, 0.2, seed=1) for i in ids]  # the same on every export
    assert first != [split_of(i, 0.2, seed=2) for i in ids]
    assert 0.17 < first.count("val") / len(first) < 0.23
    assert {split_of(i, 0.0, seed=1) for i in ids} == {"train"}


def test_coco_export_file_names_work_with_an_image_root(tmp_path, gt_and_run):
    gt, run, _ = gt_and_run
    export(str(run), "coco", str(tmp_path / "plain"), val_fraction=0.0)
    document = load_json(tmp_path / "plain" / "annotations" / "instances_train.json")
    root = Path(document["info"]["image_root"])
    assert root == gt.parent / "images"
    assert sorted(i["file_name"] for i in document["images"]) == sorted(i["file_name"] for i in load_json(gt)["images"])
    assert all((root / i["file_name"]).is_file() for i in document["images"])
    export(str(run), "coco", str(tmp_path / "copied"), images="copy", val_fraction=0.0)
    shutil.move(tmp_path / "copied", tmp_path / "moved")
    copied = COCO(str(tmp_path / "moved" / "annotations" / "instances_train.json"))
    assert all((tmp_path / "moved" / "images" / i["file_name"]).is_file() for i in copied.loadImgs(copied.getImgIds()))


def test_simplified_polygons_keep_their_shape_with_fewer_vertices():
    yy, xx = np.mgrid[:200, :200]
    mask = (((yy - 100) ** 2 + (xx - 100) ** 2) < 70 ** 2) | ((np.abs(yy - 100) < 3) & (xx > 20))  # disc + jagged bar
    exact, simple = mask_to_polygon(mask, 0.0), mask_to_polygon(mask, 1.0)
    assert len(simple) < len(exact) / 3
    assert iou(polygon_to_mask(simple, 200, 200), mask) > 0.98
    assert iou(polygon_to_mask(simple, 200, 200), polygon_to_mask(exact, 200, 200)) > 0.98


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
    result = export(str(run), "coco", str(tmp_path / "coco"), min_score=0.5, val_fraction=0.0, keep_empty=True)
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances_train.json"))
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


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target) with its bytes; the marker left out."""
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if not p.is_dir() and p.name != ".labeler.json"}


def test_an_export_into_the_folder_of_its_source_images_is_refused_and_touches_nothing(tmp_path, run_cli):
    """Issue 26, item 1: the run's images live in DS/images/...; copy unlinked each image before failing to copy
    it onto itself, link made each image a link to itself, semantic and visualize overwrote 1.png, 2.png, ..."""
    gt = generate_dataset(tmp_path / "DS", 3, seed=8)
    run = fake_run(tmp_path / "run", gt)
    before = tree(tmp_path / "DS")
    for command in (("export", "--format", "yolo", "--images", "copy"), ("export", "--format", "yolo",
                    "--images", "link"), ("export", "--format", "coco", "--images", "copy"),
                    ("export", "--format", "semantic"), ("visualize",)):
        for out in (tmp_path / "DS", tmp_path / "DS" / "images" / "sub", tmp_path):  # the root, inside, around
            result = run_cli(command[0], "--pred", run, "--out", out, *command[1:])
            assert result.exit_code == 2 and "overlaps the run's image folder" in result.stderr, (command, out)
    assert tree(tmp_path / "DS") == before

    numbered = tmp_path / "maps"
    numbered.mkdir()
    for name in ("1.png", "2.png"):
        (numbered / name).write_bytes(b"mine")
    for command in (("export", "--format", "semantic"), ("visualize",)):
        result = run_cli(command[0], "--pred", run, "--out", numbered, *command[1:])
        assert result.exit_code == 2 and "was not written by labeler" in result.stderr
    assert tree(numbered) == {"1.png": b"mine", "2.png": b"mine"}

    # A run of the images of an earlier export (a list source: they may lie anywhere, here behind a link),
    # exported into that export's folder: the image inside --out is found image by image.
    exported = tmp_path / "exported"
    export(str(run), "coco", str(exported), images="copy", val_fraction=0.0)
    (tmp_path / "gt2").mkdir()
    (tmp_path / "gt2" / "images").symlink_to(exported / "images")
    shutil.copy(exported / "annotations" / "instances_train.json", tmp_path / "gt2" / "annotations.json")
    second = fake_run(tmp_path / "run2", tmp_path / "gt2" / "annotations.json")
    (second / "run.json").write_text(json.dumps(dict(load_json(second / "run.json"), source_root="/elsewhere")))
    kept = tree(exported)
    with pytest.raises(LabelerError, match="holds the run's image"):
        export(str(second), "coco", str(exported), images="copy")
    assert tree(exported) == kept


def test_a_second_export_replaces_the_first_whole_and_a_kill_leaves_the_first(tmp_path, gt_and_run, monkeypatch,
                                                                              ultralytics_home):
    """Issue 26, item 2: another --seed put images in both train and val; a stricter filter left the earlier
    images in place under the new data.yaml; a kill mixed both."""
    _, run, _ = gt_and_run
    folder = tmp_path / "yolo"
    export(str(run), "yolo", str(folder), val_fraction=0.5, seed=1)
    assert ultralytics_labels(folder / "data.yaml", "train")  # Ultralytics writes its label cache into the set
    assert list((folder / "labels").rglob("*.cache"))
    export(str(run), "yolo", str(folder), val_fraction=0.5, seed=2)
    export(str(run), "yolo", str(tmp_path / "fresh"), val_fraction=0.5, seed=2)
    assert tree(folder) == tree(tmp_path / "fresh")
    stricter = export(str(run), "yolo", str(folder), min_score=0.75, val_fraction=0.5, seed=2)
    export(str(run), "yolo", str(tmp_path / "fresh-strict"), min_score=0.75, val_fraction=0.5, seed=2)
    assert tree(folder) == tree(tmp_path / "fresh-strict") and stricter.images < 4
    finished = tree(folder)

    from labeler.export import training_sets as export_module

    placed = []
    real_place = export_module.place_image

    def killed_after_two(uri, target, mode):
        if len(placed) == 2:
            raise KeyboardInterrupt
        placed.append(uri)
        real_place(uri, target, mode)

    monkeypatch.setattr(export_module, "place_image", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        export(str(run), "yolo", str(folder), val_fraction=0.0)
    monkeypatch.undo()
    assert tree(folder) == finished and sorted(p.name for p in tmp_path.iterdir() if "labeler-" in p.name) == []

    leftover = tmp_path / f".yolo.labeler-tmp-{'a' * 32}"  # what a SIGKILL leaves: marked as ours
    leftover.mkdir()
    (leftover / ".labeler.json").write_text(json.dumps({"format": "labeler-folder", "kind": "export"}))
    export(str(run), "yolo", str(folder), val_fraction=0.0)
    assert not leftover.exists()

    (folder / "labels" / "train" / "mine.txt").write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n")
    with pytest.raises(LabelerError, match=r"added or changed since labeler wrote it \(labels/train/mine.txt\)"):
        export(str(run), "yolo", str(folder))
    assert (folder / "labels" / "train" / "mine.txt").exists()
    with pytest.raises(LabelerError, match="holds a labeler export, not a pictures"):
        from labeler.visualize import visualize

        visualize(str(run), str(folder))


def test_images_whose_names_collide_get_names_of_their_own(tmp_path):
    """Issue 26, item 9: twin.jpg and twin.png shared labels/train/twin.txt, the second image's label lost."""
    gt = generate_dataset(tmp_path / "gt", 2, seed=3, subfolders=False)
    document = load_json(gt)
    for image, name in zip(document["images"], ("twin.png", "twin.jpg")):
        (gt.parent / "images" / image["file_name"]).rename(gt.parent / "images" / name)
        image["file_name"] = name
    gt.write_text(json.dumps(document))
    run = fake_run(tmp_path / "run", gt)
    export(str(run), "yolo", str(tmp_path / "yolo"), val_fraction=0.0)
    labels = sorted(p.name for p in (tmp_path / "yolo" / "labels" / "train").iterdir())
    images = sorted(p.name for p in (tmp_path / "yolo" / "images" / "train").iterdir())
    # Whichever comes first (shards are read in name order) keeps its name; the other is made unique by its id.
    plain = next(n for n in images if n.startswith("twin."))
    other = next(i for i in document["images"] if i["file_name"] != plain)
    assert images == sorted([plain, f"{other['id']}_{other['file_name']}"])
    assert labels == sorted(["twin.txt", f"{other['id']}_twin.txt"])
    for image in images:
        truth = next(i for i in document["images"] if image.endswith(i["file_name"]))
        count = sum(a["image_id"] == truth["id"] for a in document["annotations"])
        label = (tmp_path / "yolo" / "labels" / "train" / image).with_suffix(".txt")
        assert len(label.read_text().splitlines()) == count
    export(str(run), "coco", str(tmp_path / "coco"), images="copy", val_fraction=0.0)
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances_train.json"))
    assert sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds())) == ["twin.jpg", "twin.png"]

    for image in document["images"]:  # two names of one file: one place in a COCO set, so one is renamed
        image["file_name"] = "./twin.png" if image is document["images"][0] else "twin.png"
    gt.write_text(json.dumps(document))
    run = fake_run(tmp_path / "run-same", gt)
    export(str(run), "coco", str(tmp_path / "coco-same"), images="copy", val_fraction=0.0)
    coco = COCO(str(tmp_path / "coco-same" / "annotations" / "instances_train.json"))
    names = {i["id"]: i["file_name"] for i in coco.loadImgs(coco.getImgIds())}
    renamed = [(i, n) for i, n in names.items() if n != "twin.png"]
    assert len(renamed) == 1 and renamed[0][1] == f"{renamed[0][0]}_twin.png"
    assert all((tmp_path / "coco-same" / "images" / n).is_file() for n in names.values())


def test_an_absurd_simplify_is_refused_before_anything_is_written(tmp_path, gt_and_run):
    with pytest.raises(LabelerError, match=r"--simplify must be a number of pixels in \[0, 1000\]"):
        export(str(gt_and_run[1]), "yolo", str(tmp_path / "yolo"), simplify=1e300)
    assert not (tmp_path / "yolo").exists()
