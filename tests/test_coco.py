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
        # Issue 12, defect 3: every number from user JSON is checked before anything uses it.
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 3]), "annotation 1: bbox .* NaN or infinity"),
        (lambda d: d["annotations"][0].update(bbox=[float("inf"), 1, 3, 3]), "annotation 1: bbox .* NaN or infinity"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, -3, 3]), "annotation 1: bbox .* negative width"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, 3e9, 3]), "annotation 1: bbox .* outside the 10x10 image"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, float("nan"), 2, 3, 3]]),
         "annotation 1: polygon 0 holds NaN or infinity"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 1e12, 2, 3, 3]]),
         "annotation 1: polygon 0 has points outside the 10x10 image"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2, 2, 3]]), "annotation 1: polygon 0 must be"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, "2", 2, 3, 3]]),
         "annotation 1: polygon 0 holds something other than numbers"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [10, 10], "counts": [5, -1, 96]}),
         "annotation 1: RLE 'counts' must hold non-negative integers"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [20, 10], "counts": [200]}),
         r"annotation 1: RLE size \[20, 10\] differs from the image size \[10, 10\]"),
        (lambda d: d["annotations"][0].update(area=float("nan")), "annotation 1: area must be a finite"),
        (lambda d: d["annotations"][0].update(iscrowd=7), "annotation 1: iscrowd must be 0 or 1"),
        (lambda d: d["images"][0].update(id=2**63), r"images\[0\]: field 'id' 9223372036854775808 is not in"),
        (lambda d: d["categories"][0].update(id=-1), r"categories\[0\]: field 'id' -1 is not in"),
        (lambda d: d["images"][0].update(width=2**40), "image 1: field 'width' must be a positive integer"),
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


@pytest.mark.parametrize("counts", [[5, 200], "0?", "5[", "\u00e9"])
def test_rle_runs_must_cover_the_image_exactly(counts):
    """pycocotools decodes without bounds checks: runs past the image would write past its buffer."""
    from labeler.io.masks import segmentation_to_mask

    with pytest.raises(LabelerError, match="annotation 8: RLE"):
        segmentation_to_mask({"size": [10, 10], "counts": counts}, 10, 10, where="annotation 8")


def test_build_bank_with_a_nan_polygon_fails_in_one_line_without_allocating(tmp_path):
    """It allocated about 19.5 GB (or segfaulted under a memory limit): here it gets 2 GiB more than it starts with."""
    import json
    import subprocess
    import sys

    from labeler.synthetic import generate_dataset

    refs = generate_dataset(tmp_path / "refs", 8, seed=1)  # every class has references: the NaN is reached
    document = json.loads(refs.read_text())
    document["annotations"][0]["segmentation"][0][3] = float("nan")
    refs.write_text(json.dumps(document))  # Python's json writes and reads NaN
    # The limit is set once the libraries are loaded (OpenBLAS reserves address space at import): 2 GiB more.
    script = (
        "import resource, torch, labeler.bank.build; from labeler.cli import main; "
        "size = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024; "
        "resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), size + (2 << 30))); main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "build-bank", "--refs", str(refs), "--images", str(refs.parent / "images"),
         "--out", str(tmp_path / "bank.safetensors"), "--dinov2", "random:tiny", "--sam2", "random:tiny"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {refs}: annotation {document['annotations'][0]['id']}: polygon 0 holds NaN or infinity"
    ]
