"""--min-score and --classes: per-class thresholds, class subsets, files, and the method's selection with them."""

import json
import math

import numpy as np
import pytest
import torch

from labeler.errors import LabelerError
from labeler.io.coco import Category
from labeler.label_filter import parse_label_filter
from labeler.method.scoring import select_detections

CATEGORIES = [Category(3, "person"), Category(7, "car"), Category(9, "dog")]


def test_one_number_pairs_and_ids():
    plain = parse_label_filter("0.4", None, CATEGORIES)
    assert not plain.per_class and plain.classes is None and plain.thresholds([3, 7, 9]).tolist() == pytest.approx([0.4, 0.4, 0.4])
    mixed = parse_label_filter("0.4, person=0.7, 9=0.2", None, CATEGORIES)
    assert mixed.thresholds([3, 7, 9]).tolist() == pytest.approx([0.7, 0.4, 0.2])
    assert mixed.keeps(3, 0.7) and not mixed.keeps(3, 0.69) and mixed.keeps(9, 0.2)
    assert parse_label_filter("car=0.9", None, CATEGORIES, default=0.5).thresholds([3, 7]).tolist() == pytest.approx(
        [0.5, 0.9])
    assert parse_label_filter(0.3, None, CATEGORIES).default == pytest.approx(0.3)
    assert parse_label_filter(None, None, CATEGORIES, default=0.5).default == 0.5


def test_a_class_subset_leaves_the_other_classes_out():
    subset = parse_label_filter("0.5", "person, 9", CATEGORIES)
    assert subset.classes == frozenset({3, 9})
    assert subset.threshold(7) == math.inf and not subset.keeps(7, 1.0) and subset.keeps(9, 0.5)
    detections = [{"category_id": 7, "score": 0.99}, {"category_id": 3, "score": 0.6}, {"category_id": 9, "score": 0.4}]
    assert subset.kept(detections) == [{"category_id": 3, "score": 0.6}]
    assert subset.describe(CATEGORIES) == "score >= 0.5; classes person, dog"


def test_a_thresholds_file_round_trips(tmp_path):
    chosen = parse_label_filter("0.45,dog=0.8", "person,dog", CATEGORIES)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(chosen.to_json(CATEGORIES)))
    assert json.loads(path.read_text()) == {"default": 0.45, "classes": {"dog": 0.8}, "only": ["person", "dog"]}
    again = parse_label_filter(str(path), "person,dog", CATEGORIES)
    assert again == chosen


@pytest.mark.parametrize("text, message", [
    ("cat=0.5", "no class 'cat' in this run \\(its classes: person, car, dog\\)"),
    ("2", "2 is not in \\[0, 1\\]"),
    ("person=-0.1", "person: -0.1 is not in \\[0, 1\\]"),
    ("0.2,0.3", "more than one default"),
    ("person=high", "'high' is not a number"),
])
def test_bad_values_name_the_problem(text, message):
    with pytest.raises(LabelerError, match=message):
        parse_label_filter(text, None, CATEGORIES)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(LabelerError, match="no such file"):
        parse_label_filter(str(tmp_path / "missing.json"), None, CATEGORIES)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LabelerError, match="bad.json: not a JSON file"):
        parse_label_filter(str(tmp_path / "bad.json"), None, CATEGORIES)
    (tmp_path / "list.json").write_text("[0.5]")
    with pytest.raises(LabelerError, match="expected"):
        parse_label_filter(str(tmp_path / "list.json"), None, CATEGORIES)
    with pytest.raises(LabelerError, match="--classes: name at least one class"):
        parse_label_filter("0", " , ", CATEGORIES)


def test_per_candidate_thresholds_drop_before_the_best_are_taken():
    merged = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([0, 1, 0, 2, 2])
    per_class = torch.tensor([0.95, 0.0, 0.55])  # class 0 strict, class 1 open, class 2 in between
    assert select_detections(merged, 100, per_class[labels]).tolist() == [1, 3]
    left_out = torch.tensor([0.0, math.inf, 0.0])  # class 1 left out: its place goes to the next candidate
    assert select_detections(merged, 2, left_out[labels]).tolist() == [0, 2]
    scalar = select_detections(merged, 3, 0.65)
    assert scalar.tolist() == select_detections(merged, 3, torch.full((5,), 0.65)).tolist() == [0, 1, 2]
    assert np.isinf(parse_label_filter("0", "person", CATEGORIES).thresholds([3, 7, 9])[1:]).all()


@pytest.mark.parametrize("document, message", [
    ('{"only": 5}', '"only" must be a list of class names or ids, got 5'),  # was a traceback
    ('{"only": "dog"}', '"only" must be a list of class names or ids, got "dog"'),  # was read as d, o, g
    ('{"only": []}', '"only" names no class'),  # exported nothing with exit 0
    ('{"default": true}', "default: true is not a number"),
    ('{"default": "0.5"}', 'default: "0.5" is not a number'),
    ('{"classes": {"dog": "0.5"}}', 'class dog: "0.5" is not a number'),
    ('{"classes": {"dog": 0.5, "dog": 0.9}}', "key 'dog' is given twice"),  # the last won silently
    ('{"classes": {"dog": 0.5, "9": 0.9}}', "class 'dog' is given twice"),
])
def test_thresholds_files_are_read_strictly(tmp_path, document, message):
    """Issue 26, item 9."""
    path = tmp_path / "thresholds.json"
    path.write_text(document)
    with pytest.raises(LabelerError, match=message.replace("(", "\\(").replace("[", "\\[")):
        parse_label_filter(str(path), None, CATEGORIES)


def test_a_class_given_twice_on_the_command_line_is_refused():
    for text in ("dog=0.5,dog=0.9", "dog=0.5,9=0.9"):
        with pytest.raises(LabelerError, match="--min-score: class 'dog' is given twice"):
            parse_label_filter(text, None, CATEGORIES)
