"""The review loop: choosing images, Label Studio's brush RLE against its own converter, the CVAT set,
and merging reviewers' corrections into a training set with per-class figures."""

import copy
import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from pycocotools.coco import COCO

from labeler.errors import LabelerError
from labeler.io.coco import Category
from labeler.io.label_studio import encode_mask, mask_to_rle, rle_to_mask
from labeler.io.rle import decode_masks
from labeler.label_filter import parse_label_filter
from labeler.outdir.shards import iter_label_rows
from labeler.review.merge import ClassFigures, Instance, compare, merge_review
from labeler.review.prepare import image_url, prepare_review
from labeler.review.selection import image_uncertainty, sample_key
from labeler.synthetic import generate_dataset

from .conftest import fake_run, load_json


@pytest.fixture
def run(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 12, seed=8)
    scores = {a["id"]: 0.3 + 0.05 * (a["id"] % 12) for a in load_json(gt)["annotations"]}
    return gt, fake_run(tmp_path / "run", gt, scores), scores


def test_brush_rle_round_trips_through_label_studio_own_converter(run):
    _, out, _ = run
    checked = 0
    for row in iter_label_rows(str(out)):
        for mask in decode_masks([d["rle"] for d in row["detections"]], row["height"], row["width"]).astype(bool):
            ours = mask_to_rle(mask)
            theirs = decode_rle(ours).reshape(row["height"], row["width"], 4)[:, :, 3]
            assert np.array_equal(theirs > 0, mask) and set(np.unique(theirs)) <= {0, 255}
            assert np.array_equal(rle_to_mask(mask2rle(mask.astype(np.uint8) * 255), row["height"], row["width"]),
                                  mask)  # and their encoder's output reads back here
            checked += 1
    assert checked > 20
    edge = np.zeros((3, 70000), dtype=bool)  # a run longer than the 16-bit field
    edge[1, 5:] = True
    assert np.array_equal(decode_rle(mask_to_rle(edge)).reshape(3, 70000, 4)[:, :, 3] > 0, edge)
    with pytest.raises(LabelerError, match="does not fit a 10x10 image"):
        rle_to_mask(mask_to_rle(np.ones((4, 4), bool)), 10, 10)


CATEGORIES = [Category(1, "disc"), Category(3, "square")]


def detection(category_id, score, mask):
    from pycocotools import mask as mask_utils

    return {"category_id": category_id, "score": score,
            "rle": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()}


def box(y0, y1, x0, x1):
    mask = np.zeros((40, 40), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_uncertainty_comes_from_what_the_run_holds():
    at_half = parse_label_filter("0.5", None, CATEGORIES)
    confident = [detection(1, 0.95, box(0, 10, 0, 10))]
    assert image_uncertainty(confident, 40, 40, at_half).reason == "confident"
    near = image_uncertainty([detection(1, 0.95, box(0, 10, 0, 10)), detection(3, 0.53, box(20, 30, 20, 30))],
                             40, 40, at_half)
    assert (near.reason, near.score) == ("near threshold", pytest.approx(0.7))
    confused = image_uncertainty([detection(1, 0.9, box(0, 20, 0, 20)), detection(3, 0.8, box(0, 20, 0, 18))],
                                 40, 40, at_half)
    assert (confused.reason, confused.score) == ("class confusion", pytest.approx(0.9))
    double = image_uncertainty([detection(1, 0.9, box(0, 20, 0, 20)), detection(1, 0.9, box(0, 20, 10, 30))],
                               40, 40, at_half)
    assert (double.reason, double.score) == ("duplicate", pytest.approx(200 / 600))
    empty = image_uncertainty([detection(1, 0.1, box(0, 5, 0, 5))], 40, 40, at_half)
    assert (empty.reason, empty.score) == ("no detection", 0.5)


def test_the_budget_is_kept_and_the_random_share_is_seeded(tmp_path, run):
    _, out, _ = run
    first = prepare_review(str(out), str(tmp_path / "r1"), n=8, random_fraction=0.25, seed=4)
    again = prepare_review(str(out), str(tmp_path / "r2"), n=8, random_fraction=0.25, seed=4)
    other = prepare_review(str(out), str(tmp_path / "r3"), n=8, random_fraction=0.25, seed=5)
    assert len(first.chosen) == 8 and len({c.image_id for c in first.chosen}) == 8
    drawn = [c.image_id for c in first.chosen if c.share == "random"]
    ids = sorted(load_json(tmp_path / "gt" / "annotations.json")["images"], key=lambda i: sample_key(i["id"], 4))
    assert drawn == [i["id"] for i in ids[:2]]  # the two smallest seeded hashes: a uniform sample
    assert first.chosen == again.chosen and drawn != [c.image_id for c in other.chosen if c.share == "random"]
    doubts = [c.uncertainty for c in first.chosen if c.share == "uncertain"]
    assert doubts == sorted(doubts, reverse=True) and len(doubts) == 6
    everything = prepare_review(str(out), str(tmp_path / "r4"), n=50)
    assert len(everything.chosen) == 12  # every ok image once, no more
    tasks = json.loads(first.tasks.read_text())
    assert [t["data"]["labeler_image_id"] for t in tasks] == [c.image_id for c in first.chosen]  # random first
    assert all(t["data"]["image"].startswith("/data/local-files/?d=part") for t in tasks)
    assert '<BrushLabels name="mask" toName="image">' in first.config.read_text()


def test_image_addresses_for_label_studio():
    assert image_url("/data/set/a b.jpg", "a b.jpg", document_root="/data", url_prefix=None) == \
        "/data/local-files/?d=set/a%20b.jpg"
    assert image_url("s3://bucket/x/y.jpg", "x/y.jpg", document_root=None, url_prefix=None) == "s3://bucket/x/y.jpg"
    assert image_url("/data/set/a.jpg", "set/a.jpg", document_root=None, url_prefix="https://h/img/") == \
        "https://h/img/set/a.jpg"
    with pytest.raises(LabelerError, match="is not under it"):
        image_url("/elsewhere/a.jpg", "a.jpg", document_root="/data", url_prefix=None)


def of_mask(category_id, mask):
    return Instance(category_id, encode_mask(mask))


def test_comparing_one_image():
    auto = [of_mask(1, box(0, 10, 0, 10)), of_mask(1, box(20, 30, 20, 30)),
            of_mask(3, box(0, 10, 20, 30)),
            of_mask(3, box(30, 40, 0, 10))]
    reviewed = [of_mask(1, box(0, 10, 0, 10)),  # kept
                of_mask(1, box(20, 30, 20, 27)),  # edited: IoU 0.7
                of_mask(1, box(0, 10, 20, 30)),  # the square relabelled as a disc
                of_mask(3, box(12, 18, 12, 18))]  # added; the last square removed
    figures = compare(auto, reviewed)
    assert figures[1] == ClassFigures(auto=2, reviewed=3, kept=1, edited=1, added=1)
    assert figures[3] == ClassFigures(auto=2, reviewed=1, removed=2, relabelled=1, added=1)
    assert figures[1].precision == 1.0 and figures[1].recall == pytest.approx(2 / 3)


def reviewer_export(tasks: list[dict]) -> list[dict]:
    """What Label Studio exports after review: each task with its annotations (here: the predictions, edited)."""
    exported = []
    for position, task in enumerate(tasks):
        regions = [r for r in task["predictions"][0]["result"] if r["type"] == "brushlabels"]
        exported.append({"id": position + 1, "data": task["data"], "annotations": [
            {"id": 100 + position, "was_cancelled": False, "result": copy.deepcopy(regions)}]})
    return exported


def test_merge_of_a_hand_made_label_studio_export(tmp_path, run):
    gt, out, scores = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=12, min_score="0.45", random_fraction=0.5, seed=1)
    tasks = json.loads(review.tasks.read_text())
    export = reviewer_export(tasks)
    by_id = {t["data"]["labeler_image_id"]: t for t in export}
    sizes = {i["id"]: (i["height"], i["width"]) for i in load_json(gt)["images"]}
    with_two = [i for i, t in by_id.items() if len(t["annotations"][0]["result"]) >= 2]
    deleted_in, edited_in, relabelled_in, skipped = with_two[0], with_two[1], with_two[2], with_two[3]
    deleted = by_id[deleted_in]["annotations"][0]["result"].pop()
    edited = by_id[edited_in]["annotations"][0]["result"][0]
    height, width = sizes[edited_in]
    mask = rle_to_mask(edited["value"]["rle"], height, width)
    ys, xs = np.nonzero(mask)
    half = mask & (np.arange(width)[None, :] >= xs.min() + 0.3 * (xs.max() - xs.min()))  # the reviewer cut a third
    edited["value"]["rle"] = mask_to_rle(half)
    relabelled = by_id[relabelled_in]["annotations"][0]["result"][0]
    old_name = relabelled["value"]["brushlabels"][0]
    new_name = "star" if old_name != "star" else "disc"
    relabelled["value"]["brushlabels"] = [new_name]
    by_id[deleted_in]["annotations"][0]["result"].append({  # a missed object, drawn as a polygon
        "id": "added1", "type": "polygonlabels", "from_name": "polygon", "to_name": "image",
        "original_width": 320, "original_height": 256,
        "value": {"points": [[2, 2], [12, 2], [12, 12], [2, 12]], "polygonlabels": ["triangle"]}})
    by_id[skipped]["annotations"] = []  # not reviewed: keeps its auto-labels
    (tmp_path / "export.json").write_text(json.dumps(export))

    result = merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "export.json"), str(tmp_path / "final"),
                          val_fraction=0.0)
    assert result.reviewed_images == 11
    total = {name: f for name, f in result.figures_all.items()}
    deleted_name = deleted["value"]["brushlabels"][0]
    edited_name = edited["value"]["brushlabels"][0]
    assert sum(f.removed for f in total.values()) == 2 and total[deleted_name].removed >= 1
    assert total[old_name].relabelled == 1 and total[new_name].added >= 1
    assert total["triangle"].added >= 1 and total[edited_name].edited == 1
    assert sum(f.added for f in total.values()) == 2
    shown = sum(len([r for r in t["predictions"][0]["result"] if r["type"] == "brushlabels"]) for t in tasks
                if t["data"]["labeler_image_id"] != skipped)
    assert sum(f.auto for f in total.values()) == shown
    assert sum(f.kept for f in total.values()) == shown - 3  # all but the deleted, edited and relabelled
    report = json.loads((tmp_path / "final" / "report.json").read_text())
    assert report["all_reviewed"][edited_name]["edited"] == 1 and set(report["more_shots"]) >= {old_name}

    final = COCO(str(tmp_path / "final" / "annotations" / "instances_train.json"))
    names = {c["id"]: c["name"] for c in final.dataset["categories"]}
    anns = {image_id: final.loadAnns(final.getAnnIds(imgIds=[image_id])) for image_id in final.getImgIds()}
    assert anns[deleted_in] and any(names[a["category_id"]] == "triangle" for a in anns[deleted_in])
    assert any(final.annToMask(a).astype(bool).sum() == half.sum() and np.array_equal(
        final.annToMask(a).astype(bool), half) for a in anns[edited_in])
    assert any(names[a["category_id"]] == new_name for a in anns[relabelled_in])
    auto_kept = [d for r in iter_label_rows(str(out)) if r["image_id"] == skipped for d in r["detections"]
                 if d["score"] >= 0.45]
    assert len(anns[skipped]) == len(auto_kept)  # not reviewed: its auto-labels above the threshold
    assert all(a["iscrowd"] == 0 and "score" not in a for image in anns.values() for a in image)
    reviewed_only = load_json(tmp_path / "final" / "annotations" / "reviewed.json")
    assert sorted(i["id"] for i in reviewed_only["images"]) == sorted(set(by_id) - {skipped})

    from labeler.bank.build import build_bank  # the loop: reviewed images are references as they are

    bank = build_bank(str(tmp_path / "final" / "annotations" / "reviewed.json"), reviewed_only["info"]["image_root"],
                      dinov2="random:tiny", sam2="random:tiny", device="cpu")
    assert len(bank.annotation_ids) == len(reviewed_only["annotations"])


def test_merge_of_a_cvat_coco_export(tmp_path, run):
    _, out, _ = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=4, min_score="0.45", random_fraction=0.0)
    document = load_json(review.cvat)
    cvat_ids = {c["id"]: k + 1 for k, c in enumerate(document["categories"])}  # CVAT numbers labels anew
    document["categories"] = [{**c, "id": cvat_ids[c["id"]]} for c in document["categories"]]
    for annotation in document["annotations"]:
        annotation["category_id"] = cvat_ids[annotation["category_id"]]
    removed = document["annotations"].pop(0)
    (tmp_path / "cvat.json").write_text(json.dumps(document))
    COCO(str(review.cvat))  # the set CVAT imports is a valid COCO file
    result = merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "cvat.json"), str(tmp_path / "final"))
    assert result.reviewed_images == 4
    assert sum(f.removed for f in result.figures_all.values()) == 1
    assert sum(f.kept for f in result.figures_all.values()) == len(document["annotations"])
    names = {c["id"]: c["name"] for c in document["categories"]}
    assert result.figures_all[names[removed["category_id"]]].removed == 1  # matched by name, not by CVAT's id


def test_review_and_merge_on_the_command_line(tmp_path, run, run_cli):
    _, out, _ = run
    chosen = run_cli("review", "--pred", out, "--out", tmp_path / "review", "--n", "5", "--seed", "2")
    assert chosen.exit_code == 0, chosen.stderr
    assert "chose 5 images: 1 at random, 4 most uncertain" in chosen.stdout
    tasks = json.loads((tmp_path / "review" / "label-studio" / "tasks.json").read_text())
    (tmp_path / "export.json").write_text(json.dumps(reviewer_export(tasks)))
    merged = run_cli("review", "merge", "--pred", out, "--review", tmp_path / "review", "--labels",
                     tmp_path / "export.json", "--out", tmp_path / "final")
    assert merged.exit_code == 0, merged.stderr
    assert "(5 reviewed)" in merged.stdout and "P(random)" in merged.stdout
    missing = run_cli("review", "merge", "--pred", out, "--review", tmp_path / "nope", "--labels",
                      tmp_path / "export.json", "--out", tmp_path / "final2")
    assert missing.exit_code == 2 and "--review" in missing.stderr


def _first_region(export):
    return next(t for t in export if t["annotations"][0]["result"])["annotations"][0]["result"][0]


def _region_value(key, value):
    return lambda export: _first_region(export)["value"].update({key: value})


HOSTILE_LABEL_STUDIO = [
    (lambda e: e[0].update(annotations={"result": []}), "'annotations' must be a list of objects"),
    (lambda e: _first_region(e).update(type=None), "'type' must be a string, got null"),
    (_region_value("rle", [300, 1, 2]), "'rle' must be a list of bytes"),
    (_region_value("rle", [-1]), "'rle' must be a list of bytes"),
    (_region_value("rle", "abc"), "'rle' must be a list of bytes"),
    (_region_value("rle", [0, 0, 0]), "brush RLE"),
    (_region_value("brushlabels", [["disc"]]), "'brushlabels' must name one class"),
    (_region_value("brushlabels", ["disc", "star"]), "'brushlabels' must name one class"),
    (_region_value("brushlabels", "disc"), "'brushlabels' must name one class"),
    (_region_value("brushlabels", ["boat"]), "class \"boat\" is not one of the run's"),
    (lambda e: _first_region(e).update(value=None), "'value' must be an object"),
    (lambda e: e[0]["data"].update(labeler_image_id="7"), "image \"7\" is not one of this review's"),
    (lambda e: e[0]["data"].update(file_name="other.png"), "the export is of another review"),
]
POLYGON = {"id": "p1", "type": "polygonlabels", "value": {"points": [[2, 2], [12, 2], [12, 12]],
                                                          "polygonlabels": ["disc"]}}


def _with_region(region):
    def mutate(export):
        next(t for t in export if t["annotations"][0]["result"])["annotations"][0]["result"].append(
            copy.deepcopy(region))
    return mutate


def _polygon(points):
    return _with_region({**POLYGON, "value": {**POLYGON["value"], "points": points}})


def _box(**value):
    return _with_region({"id": "b1", "type": "rectanglelabels", "value": {
        "x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["disc"], **value}})


HOSTILE_LABEL_STUDIO += [
    (_polygon([[2, 2], [float("nan"), 2], [12, 12]]), "a point's x must be a finite number"),  # was 8,604 pixels
    (_polygon([[2, 2], [12], [12, 12]]), "'points' must be a list of at least 3 [x, y] pairs"),  # ragged
    (_polygon([[2, 2], [12, 2]]), "'points' must be a list of at least 3"),
    (_polygon([[200, 200], [300, 200], [300, 300]]), "the polygon lies outside the image"),
    (_box(x=float("inf")), "'x' must be a finite number"),
    (_box(width=-5), "is empty"),
    (_box(x=150), "the box lies outside the image"),
    (_box(rectanglelabels=None), "'rectanglelabels' must name one class"),
    (lambda export: export.append(copy.deepcopy(export[0])), "has a second task"),  # the last silently won
]


@pytest.mark.parametrize("mutate, message", HOSTILE_LABEL_STUDIO,
                         ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(HOSTILE_LABEL_STUDIO)])
def test_a_hostile_label_studio_export_is_refused_in_one_line_naming_task_and_region(tmp_path, run, run_cli, mutate,
                                                                                     message):
    """Issue 26, item 7: about 20 tracebacks and some silent garbage before."""
    _, out, _ = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=4, min_score="0.3")
    export = reviewer_export(json.loads(review.tasks.read_text()))
    mutate(export)
    (tmp_path / "export.json").write_text(json.dumps(export))
    result = run_cli("review", "merge", "--pred", out, "--review", tmp_path / "review", "--labels",
                     tmp_path / "export.json", "--out", tmp_path / "final")
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert message in line and "task" in line, line
    assert not (tmp_path / "final").exists()  # nothing written


HOSTILE_CVAT = [
    (lambda d: d.update(images=5), "'images' must be a list of objects"),
    (lambda d: d["images"][0].pop("file_name"), "has no 'file_name'"),
    (lambda d: d["annotations"][0].pop("image_id"), "'image_id' must be an integer"),
    (lambda d: d["categories"][0].pop("name"), "has no 'name'"),
    (lambda d: d["images"].append(dict(d["images"][0], id=999)), "is listed twice"),
    (lambda d: d["annotations"][0].update(segmentation=None, bbox=[400, 400, 30, 30]), "lies outside the"),
    (lambda d: d["annotations"][0].update(segmentation=None, bbox=[1, float("nan"), 3, 3]), "NaN or infinity"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), "polygon 0 must be a list of x, y pairs"),
    (lambda d: d["annotations"][0].update(category_id=99), "category 99 is not listed"),
]


@pytest.mark.parametrize("mutate, message", HOSTILE_CVAT, ids=[m[:30] for _, m in HOSTILE_CVAT])
def test_a_hostile_cvat_export_is_refused_in_one_line(tmp_path, run, mutate, message):
    _, out, _ = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=4, min_score="0.3")
    document = load_json(review.cvat)
    mutate(document)
    (tmp_path / "cvat.json").write_text(json.dumps(document))
    with pytest.raises(LabelerError, match=message.replace("(", "\\(").replace("[", "\\[")):
        merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "cvat.json"), str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def test_a_cvat_box_partly_outside_the_image_is_clipped(tmp_path, run):
    """The box [-20, -20, 50, 50] became a 275x211 box through negative slicing before."""
    _, out, _ = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=1, min_score="0.3")
    document = load_json(review.cvat)
    image = document["images"][0]
    document["annotations"] = [{"id": 1, "image_id": image["id"], "category_id": document["categories"][0]["id"],
                                "bbox": [-20, -20, 50, 50], "segmentation": [], "iscrowd": 0, "area": 0}]
    (tmp_path / "cvat.json").write_text(json.dumps(document))
    merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "cvat.json"), str(tmp_path / "final"))
    (annotation,) = load_json(tmp_path / "final" / "annotations" / "reviewed.json")["annotations"]
    assert annotation["bbox"] == [0.0, 0.0, 30.0, 30.0] and annotation["area"] == 900


def _renumbered(gt, tmp_path):
    """The ground truth of ``gt`` with its image ids in reverse: another run of the same images."""
    document = load_json(gt)
    ids = [i["id"] for i in document["images"]]
    new = dict(zip(ids, reversed(ids)))
    for image in document["images"]:
        image["id"] = new[image["id"]]
    for annotation in document["annotations"]:
        annotation["image_id"] = new[annotation["image_id"]]
    path = gt.parent / "renumbered.json"
    path.write_text(json.dumps(document))
    return path


def test_a_review_merged_into_another_run_is_refused(tmp_path, run):
    """Issue 26, item 3: tasks were matched by labeler_image_id alone: every mask went to another image, exit 0."""
    gt, out, scores = run
    review = prepare_review(str(out), str(tmp_path / "review"), n=6, min_score="0.3")
    export = reviewer_export(json.loads(review.tasks.read_text()))
    (tmp_path / "export.json").write_text(json.dumps(export))
    other = fake_run(tmp_path / "other", _renumbered(gt, tmp_path), scores)
    with pytest.raises(LabelerError, match=r"image \d+ is .* there, but the review chose .* under that id"):
        merge_review(str(other), str(tmp_path / "review"), str(tmp_path / "export.json"), str(tmp_path / "f1"))

    manifest = load_json(out / "run.json")
    (out / "run.json").write_text(json.dumps(dict(manifest, out_id="a" * 32)))
    (other / "run.json").write_text(json.dumps(dict(manifest, out_id="b" * 32)))
    prepare_review(str(out), str(tmp_path / "review2"), n=6, min_score="0.3")
    with pytest.raises(LabelerError, match="was prepared on another run"):
        merge_review(str(other), str(tmp_path / "review2"), str(tmp_path / "export.json"), str(tmp_path / "f2"))
    merge_review(str(out), str(tmp_path / "review2"), str(tmp_path / "export.json"), str(tmp_path / "f3"))
    assert not (tmp_path / "f1").exists() and not (tmp_path / "f2").exists()


def test_boxes_drawn_alone_are_instances_and_boxes_over_masks_are_not():
    from labeler.io.label_studio import reviewed_instances

    mask = box(0, 20, 0, 20)
    regions = [
        {"id": "m", "type": "brushlabels", "value": {"rle": mask_to_rle(mask), "brushlabels": ["disc"]}},
        {"id": "b-same", "type": "rectanglelabels",  # the box of the mask: not an instance of its own
         "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rectanglelabels": ["disc"]}},
        {"id": "b-other", "type": "rectanglelabels",  # over the mask, another class: an instance
         "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rectanglelabels": ["square"]}},
        {"id": "b-alone", "type": "rectanglelabels",
         "value": {"x": 75, "y": 75, "width": 25, "height": 25, "rectanglelabels": ["disc"]}},
        {"id": "rel", "type": "relation", "from_id": "m", "to_id": "b-alone"},  # not a region: ignored
    ]
    instances = reviewed_instances(regions, 40, 40, "task 1")
    from pycocotools import mask as mask_utils

    assert [(i.name, int(mask_utils.area(i.rle))) for i in instances] == [("disc", 400), ("square", 400),
                                                                         ("disc", 100)]


def test_reviewed_json_builds_a_bank_when_a_class_was_removed_and_images_lie_outside_the_root(tmp_path, run):
    """Issue 26, item 10: reviewed.json listed every class (build-bank refused the one reviewers removed) and kept
    absolute file names for images outside a list source's folder (refused by build-bank)."""
    gt, _, scores = run
    document = load_json(gt)
    for image in document["images"]:  # a list source's images outside its folder: file_name is the absolute path
        image["file_name"] = str(gt.parent / "images" / image["file_name"])
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(document))
    out = fake_run(tmp_path / "list-run", listed, scores)
    (out / "run.json").write_text(json.dumps(dict(load_json(out / "run.json"), source_root=str(tmp_path / "lists"))))
    review = prepare_review(str(out), str(tmp_path / "review"), n=12, min_score="0.3", document_root=str(tmp_path))
    export = reviewer_export(json.loads(review.tasks.read_text()))
    gone = "square"
    for task in export:
        result = task["annotations"][0]["result"]
        result[:] = [r for r in result if r["value"]["brushlabels"][0] != gone]
    (tmp_path / "export.json").write_text(json.dumps(export))
    merged = merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "export.json"), str(tmp_path / "final"))
    assert gone not in merged.reference_classes and f"no reviewed instance of {gone}" in merged.table()
    reviewed = load_json(tmp_path / "final" / "annotations" / "reviewed.json")
    assert gone not in [c["name"] for c in reviewed["categories"]]
    assert all(not i["file_name"].startswith(("/", "..")) for i in reviewed["images"])
    from labeler.bank.build import build_bank

    bank = build_bank(str(tmp_path / "final" / "annotations" / "reviewed.json"), reviewed["info"]["image_root"],
                      dinov2="random:tiny", sam2="random:tiny", device="cpu")
    assert gone not in [c.name for c in bank.categories] and len(bank.annotation_ids) == len(reviewed["annotations"])


def test_task_addresses_stay_under_their_roots(tmp_path):
    """Issue 26, item 9: --url-prefix leaked absolute paths and .. into task URLs."""
    with pytest.raises(LabelerError, match="--url-prefix: image /elsewhere/a.jpg is not under the run's image root"):
        image_url("/elsewhere/a.jpg", "/elsewhere/a.jpg", document_root=None, url_prefix="https://h/img/")
    with pytest.raises(LabelerError, match="not under the run's image root"):
        image_url("/data/../x/a.jpg", "../x/a.jpg", document_root=None, url_prefix="https://h/img/")
    with pytest.raises(LabelerError, match="is not under it"):
        image_url("/root/../outside/o.jpg", "o.jpg", document_root="/root", url_prefix=None)
    assert image_url("/data/./set/a.jpg", "set/a.jpg", document_root="/data/", url_prefix=None) == \
        "/data/local-files/?d=set/a.jpg"
