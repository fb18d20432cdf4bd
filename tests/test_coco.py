"""Reading COCO files: every malformed field is one clear error naming it."""

import pytest

from labeler.errors import LabelerError
from labeler.io.coco import read_coco
from labeler.io.storage import join_under

from .conftest import write_json


def base():
    return {
        "images": [{"id": 1, "file_name": "a/b.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": 5, "name": "thing"}],
    }


def test_reads_a_valid_file(tmp_path):
    dataset = read_coco(str(write_json(tmp_path / "c.json", base())))
    assert dataset.categories[5].name == "thing"
    assert dataset.annotations[0].bbox == (1.0, 1.0, 3.0, 3.0) and not dataset.annotations[0].has_mask


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(category_id=6), "annotation 1: unknown category_id 6"),
        (lambda d: d["annotations"][0].update(image_id=2), "annotation 1: unknown image_id 2"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate annotation id 1"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), "annotation 1: bbox must be four numbers"),
        (lambda d: d["images"][0].pop("file_name"), "image 1: missing field 'file_name'"),
        (lambda d: d["images"][0].update(width=-3), "image 1: field 'width' must be a positive integer"),
        (lambda d: d.pop("categories"), "missing or non-list 'categories'"),
        (lambda d: d["annotations"][0].update(segmentation="x"), "annotation 1: segmentation must be"),
    ],
)
def test_field_errors(tmp_path, edit, message):
    document = base()
    edit(document)
    path = write_json(tmp_path / "c.json", document)
    with pytest.raises(LabelerError, match=message):
        read_coco(str(path))


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [')
    with pytest.raises(LabelerError, match="bad.json: malformed JSON"):
        read_coco(str(path))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(LabelerError, match="nope.json: no such file"):
        read_coco(str(tmp_path / "nope.json"))


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "s3://b/x.png"])
def test_file_name_escaping_root_is_refused(name):
    with pytest.raises(LabelerError, match="image 3"):
        join_under("/data/root", name, what="image 3")


def test_file_name_with_subfolders_and_harmless_dots():
    assert join_under("s3://bucket/root/", "a/./b/../c.png", what="x") == "s3://bucket/root/a/c.png"
