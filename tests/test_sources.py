"""Listing sources: folders, URI lists and COCO files, with stable ids."""

import pytest

from labeler.errors import LabelerError
from labeler.io.sources import list_source, stable_image_id

from .conftest import write_json


def rows(listing):
    return dict(zip(listing.table.column("uri").to_pylist(), listing.table.column("image_id").to_pylist()))


def test_folder_is_listed_recursively_by_image_names(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "x.jpg").write_bytes(b"1")
    (tmp_path / "a" / "b" / "y.PNG").write_bytes(b"2")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / "a" / "folder.jpg").mkdir()  # named like an image: listed, so it ends as an error row
    (tmp_path / "a" / "folder.jpg" / "inner.png").write_bytes(b"3")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")  # a symlink loop: listed too
    (tmp_path / "linked").symlink_to(tmp_path / "a")  # symlinked folders are not followed
    listing = list_source(str(tmp_path))
    assert sorted(rows(listing)) == sorted(str(tmp_path / p) for p in
                                           ["a/b/y.PNG", "a/folder.jpg", "a/folder.jpg/inner.png", "loop.jpg", "x.jpg"])
    assert listing.kind == "folder"


def test_folder_ids_are_stable_and_independent_of_other_files(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"1")
    first = rows(list_source(str(tmp_path)))
    (tmp_path / "new.jpg").write_bytes(b"2")
    second = rows(list_source(str(tmp_path)))
    assert second[str(tmp_path / "x.jpg")] == first[str(tmp_path / "x.jpg")] == stable_image_id("x.jpg")
    assert 0 < stable_image_id("x.jpg") < 2**53


def test_uri_list_skips_comments_blanks_and_repeats(tmp_path):
    listing_file = tmp_path / "list.txt"
    listing_file.write_text("# images\ns3://b/one.jpg\n\n/data/two.png\ns3://b/one.jpg\n")
    listing = list_source(str(listing_file))
    assert list(rows(listing)) == ["s3://b/one.jpg", "/data/two.png"]
    assert rows(listing)["s3://b/one.jpg"] == stable_image_id("s3://b/one.jpg")


def test_coco_source_keeps_its_ids_and_uses_image_root(tmp_path):
    coco = write_json(tmp_path / "gt.json", {
        "images": [{"id": 42, "file_name": "sub/a.png"}, {"id": 7, "file_name": "b.png"}],
        "annotations": [], "categories": [],
    })
    assert rows(list_source(str(coco))) == {str(tmp_path / "b.png"): 7, str(tmp_path / "sub" / "a.png"): 42}
    assert rows(list_source(str(coco), image_root="s3://bucket/imgs")) == {
        "s3://bucket/imgs/b.png": 7, "s3://bucket/imgs/sub/a.png": 42}


def test_coco_source_refuses_escaping_file_names(tmp_path):
    coco = write_json(tmp_path / "gt.json", {"images": [{"id": 1, "file_name": "../x.png"}], "categories": []})
    with pytest.raises(LabelerError, match="image 1: file_name '../x.png' escapes the image root"):
        list_source(str(coco))


def test_missing_source(tmp_path):
    with pytest.raises(LabelerError, match="no such folder or prefix"):
        list_source(str(tmp_path / "nope"))
    with pytest.raises(LabelerError, match="--image-root applies to COCO JSON sources only"):
        list_source(str(tmp_path), image_root="x")


def test_relative_roots_and_list_entries_become_absolute(tmp_path, monkeypatch):
    """Stored URIs must name the image wherever the labels are read from (issue 12, defect 11)."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "a.jpg").write_bytes(b"1")
    (tmp_path / "data" / "list.txt").write_text("imgs/a.jpg\n../elsewhere/b.png\ns3://bucket/c.jpg\n")
    write_json(tmp_path / "data" / "gt.json", {"images": [{"id": 3, "file_name": "a.jpg"}], "categories": []})
    monkeypatch.chdir(tmp_path)
    assert list(rows(list_source("data/imgs"))) == [str(tmp_path / "data" / "imgs" / "a.jpg")]
    assert list(rows(list_source("data/gt.json", image_root="data/imgs"))) == [str(tmp_path / "data/imgs/a.jpg")]
    assert list(rows(list_source("data/list.txt"))) == [  # relative to the list, as COCO file_names are
        str(tmp_path / "data" / "imgs" / "a.jpg"), str(tmp_path / "elsewhere" / "b.png"), "s3://bucket/c.jpg"]
