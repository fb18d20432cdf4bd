"""Sources and the stored listing: streamed, sorted, sequential ids that never collide
and never change, reused by reruns, merged on --relist."""

import numpy as np
import pytest

from labeler.errors import LabelerError
from labeler.io.external_sort import ExternalSort
from labeler.io.labels import relative_file_name
from labeler.io.sources import read_source, source_root
from labeler.outdir import listing as listing_module
from labeler.outdir.id_set import IdSet
from labeler.outdir.listing import load_listing, part_rows_for, store_listing

from .conftest import source_uris, stored_listing, write_json


def store(out, source, **kwargs):
    previous = load_listing(str(out)) if kwargs.pop("relist", False) else None
    return store_listing(str(out), read_source(str(source), **kwargs), previous=previous)


def test_folder_is_listed_recursively_by_image_names(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "x.jpg").write_bytes(b"1")
    (tmp_path / "a" / "b" / "y.PNG").write_bytes(b"2")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / "a" / "folder.jpg").mkdir()  # named like an image: listed, so it ends as an error row
    (tmp_path / "a" / "folder.jpg" / "inner.png").write_bytes(b"3")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")  # a symlink loop: listed too
    (tmp_path / "linked").symlink_to(tmp_path / "a")  # symlinked folders are not followed
    entries = read_source(str(tmp_path))
    assert entries.kind == "folder"
    assert sorted(uri for batch in entries.uri_batches for uri in batch) == sorted(
        str(tmp_path / p) for p in ["a/b/y.PNG", "a/folder.jpg", "a/folder.jpg/inner.png", "loop.jpg", "x.jpg"])


def test_ids_are_sequential_in_uri_order_and_survive_a_relist(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for name in ("b.jpg", "d.jpg", "a.jpg"):
        (images / name).write_bytes(b"1")
    first = store(out, images)
    assert stored_listing(out) == {str(images / "a.jpg"): 1, str(images / "b.jpg"): 2, str(images / "d.jpg"): 3}
    assert (first.images, first.next_id, first.kind) == (3, 4, "folder")

    (images / "b.jpg").unlink()
    (images / "c.jpg").write_bytes(b"1")
    (images / "0.jpg").write_bytes(b"1")
    second = store(out, images, relist=True)
    # Kept images keep their ids; added ones get new ids in URI order; the id of b.jpg is never reused.
    assert stored_listing(out) == {str(images / "0.jpg"): 4, str(images / "a.jpg"): 1, str(images / "c.jpg"): 5,
                                   str(images / "d.jpg"): 3}
    assert (second.images, second.next_id) == (4, 6)
    assert second.version != first.version and not (out / "_state" / "listing" / first.version).exists()
    assert sorted(np.flatnonzero(second.ids().contains(np.arange(8)))) == [1, 3, 4, 5]


def test_a_list_is_sorted_and_deduplicated_through_runs_on_disk(tmp_path, monkeypatch):
    """More URIs than a sort run holds: the merge of the runs still yields each URI once, in order."""
    monkeypatch.setattr(listing_module, "ExternalSort", lambda: ExternalSort(run_rows=7))
    uris = [f"s3://bucket/{n % 40:03d}.jpg" for n in range(97, 0, -1)]  # 97 lines, 40 distinct, shuffled order
    source = tmp_path / "list.txt"
    source.write_text("# a comment\n\n" + "\n".join(uris) + "\n")
    listing = store(tmp_path / "out", source)
    stored = stored_listing(tmp_path / "out")
    assert list(stored) == sorted(set(uris)) and list(stored.values()) == list(range(1, 41))
    assert (listing.images, listing.repeats) == (40, 57)


def test_coco_source_keeps_its_ids_and_uses_image_root(tmp_path):
    coco = write_json(tmp_path / "gt.json", {
        "images": [{"id": 42, "file_name": "sub/a.png"}, {"id": 7, "file_name": "b.png"}],
        "annotations": [], "categories": [],
    })
    store(tmp_path / "out", coco)
    assert stored_listing(tmp_path / "out") == {str(tmp_path / "b.png"): 7, str(tmp_path / "sub" / "a.png"): 42}
    store(tmp_path / "out2", coco, image_root="s3://bucket/imgs")
    assert stored_listing(tmp_path / "out2") == {"s3://bucket/imgs/b.png": 7, "s3://bucket/imgs/sub/a.png": 42}


def test_parts_have_a_sensible_size_however_many_images():
    assert [part_rows_for(n) for n in (1, 80, 100_000, 1_000_000, 10_000_000)] == [16, 16, 391, 3907, 4096]


def test_listing_parts_split_and_read_back_in_order(tmp_path):
    source = tmp_path / "list.txt"
    source.write_text("\n".join(f"/data/{n:05d}.jpg" for n in range(5000)))
    listing = store(tmp_path / "out", source)
    assert listing.parts == 250 and listing.images == 5000  # 20 rows each
    ids = np.concatenate([t.column("image_id").to_numpy() for t in listing.iter_tables()])
    assert ids.tolist() == list(range(1, 5001)) and len(listing.ids()) == 5000


def test_a_kill_before_the_pointer_swap_leaves_the_previous_listing_in_force(tmp_path, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"1")
    first = store(out, images)
    (images / "b.jpg").write_bytes(b"1")
    monkeypatch.setattr(listing_module, "remove_other_versions", lambda *args: None)
    real_write = listing_module.storage.write_bytes_atomic

    def killed_at_the_pointer(uri, data):
        if uri.endswith("listing.json"):
            raise KeyboardInterrupt
        real_write(uri, data)

    monkeypatch.setattr(listing_module.storage, "write_bytes_atomic", killed_at_the_pointer)
    with pytest.raises(KeyboardInterrupt):
        store(out, images, relist=True)
    monkeypatch.undo()
    assert load_listing(str(out)) == first and len(list((out / "_state" / "listing").iterdir())) == 2
    listing_module.remove_other_versions(str(out), first)
    assert [p.name for p in (out / "_state" / "listing").iterdir()] == [first.version]


def test_id_sets_are_bitmaps_for_dense_ids_and_arrays_for_sparse_ones():
    dense = IdSet.from_ids(np.arange(1, 10_001))
    sparse = IdSet.from_ids(np.array([5, 2**62, 7]))
    assert dense.nbytes == 1251 and sparse.nbytes == 24
    probe = np.array([0, 1, 5, 7, 10_000, 10_001, 2**62, -3])
    assert dense.contains(probe).tolist() == [False, True, True, True, True, False, False, False]
    assert sparse.contains(probe).tolist() == [False, False, True, True, False, False, True, False]
    assert len(dense) == 10_000 and len(sparse) == 3
    grown = IdSet.empty(100)
    grown.add(np.array([3, 3, 99]))
    assert len(grown) == 2 and IdSet.from_bytes(grown.to_bytes()).contains(np.array([3, 4, 99])).tolist() == [
        True, False, True]
    with pytest.raises(ValueError, match="outside"):
        grown.add(np.array([104]))  # 13 bytes hold ids 0..103


def test_missing_or_unreadable_sources(tmp_path):
    with pytest.raises(LabelerError, match="no such folder or prefix"):
        read_source(str(tmp_path / "nope"))
    with pytest.raises(LabelerError, match="no such file"):
        read_source(str(tmp_path / "nope.txt"))
    with pytest.raises(LabelerError, match="--image-root applies to COCO JSON sources only"):
        read_source(str(tmp_path), image_root="x")
    write_json(tmp_path / "gt.json", {"images": [{"id": 1, "file_name": "../x.png"}], "categories": []})
    with pytest.raises(LabelerError, match="image 1: file_name '../x.png' escapes the image root"):
        read_source(str(tmp_path / "gt.json"))


def test_relative_roots_and_list_entries_become_absolute(tmp_path, monkeypatch):
    """Stored URIs must name the image wherever the labels are read from (issue 12, defect 11)."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "a.jpg").write_bytes(b"1")
    (tmp_path / "data" / "list.txt").write_text("imgs/a.jpg\n../elsewhere/b.png\ns3://bucket/c.jpg\n")
    write_json(tmp_path / "data" / "gt.json", {"images": [{"id": 3, "file_name": "a.jpg"}], "categories": []})
    monkeypatch.chdir(tmp_path)
    assert source_uris("data/imgs") == [str(tmp_path / "data" / "imgs" / "a.jpg")]
    coco = read_source("data/gt.json", image_root="data/imgs").coco_images
    assert coco.column("uri").to_pylist() == [str(tmp_path / "data/imgs/a.jpg")]
    assert source_uris("data/list.txt") == [  # relative to the list, as COCO file_names are
        str(tmp_path / "data" / "imgs" / "a.jpg"), str(tmp_path / "elsewhere" / "b.png"), "s3://bucket/c.jpg"]


def test_each_source_kind_has_the_root_its_file_names_are_relative_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_root("photos/") == str(tmp_path / "photos")
    assert source_root("lists/today.txt") == str(tmp_path / "lists")
    assert source_root("gt/annotations.json") == str(tmp_path / "gt")
    assert source_root("gt/annotations.json", "data/images/") == str(tmp_path / "data" / "images")
    assert source_root("s3://bucket/photos/") == "s3://bucket/photos"
    assert source_root("s3://bucket/lists/today.txt") == "s3://bucket/lists"
    assert source_root("s3://bucket/gt.json", "s3://bucket/images") == "s3://bucket/images"
    root = str(tmp_path / "photos")
    assert relative_file_name(f"{root}/part0/a.jpg", root) == "part0/a.jpg"
    assert relative_file_name(f"{root}-other/a.jpg", root) == f"{root}-other/a.jpg"  # a sibling is not below it
    assert relative_file_name("s3://other/a.jpg", root) == "s3://other/a.jpg"
    assert relative_file_name("s3://bucket/photos/x/y.png", "s3://bucket/photos") == "x/y.png"


def test_folders_labeler_wrote_are_not_listed_as_a_sources_images(tmp_path):
    """Issue 26, item 9: an OUT or an export inside the source was listed by --relist, labeler's own pictures
    labelled as the user's images."""
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "run-out" / "_state").mkdir(parents=True)
    (tmp_path / "run-out" / "_state" / "settings.json").write_text("{}")
    (tmp_path / "run-out" / "pictures").mkdir()
    (tmp_path / "run-out" / "pictures" / "1.png").write_bytes(b"1")
    (tmp_path / "export" / "images" / "train").mkdir(parents=True)
    (tmp_path / "export" / ".labeler.json").write_text("{}")
    (tmp_path / "export" / "images" / "train" / "a.jpg").write_bytes(b"1")
    (tmp_path / "plain" / "_state").mkdir(parents=True)  # a user folder that merely has the name
    (tmp_path / "plain" / "_state" / "b.jpg").write_bytes(b"1")
    assert sorted(source_uris(str(tmp_path))) == [str(tmp_path / "a.jpg"), str(tmp_path / "plain" / "_state" / "b.jpg")]
    assert source_uris(str(tmp_path / "export")) == [str(tmp_path / "export" / "images" / "train" / "a.jpg")]


def test_names_that_are_not_valid_unicode_are_listed_escaped(tmp_path):
    """Issue 26, item 6: a Latin-1 name stopped every listing (UnicodeEncodeError in the sort)."""
    import os

    folder = os.fsencode(str(tmp_path))
    for name in (b"caf\xe9.jpg", b"ok.jpg"):
        with open(folder + b"/" + name, "wb") as handle:
            handle.write(b"1")
    (tmp_path / "list.txt").write_bytes(b"caf\xe9.jpg\n" + folder + b"/ok.jpg\n")
    expected = [f"{tmp_path}/caf\\xe9.jpg", f"{tmp_path}/ok.jpg"]
    assert sorted(source_uris(str(tmp_path))) == expected
    assert sorted(source_uris(str(tmp_path / "list.txt"))) == expected
    stored = store(tmp_path / "out", tmp_path)
    assert stored.images == 2 and sorted(stored_listing(tmp_path / "out")) == expected


def test_list_lines_naming_one_file_are_one_image_and_dots_do_not_climb_out(tmp_path):
    """Issue 26, item 9: ./a.jpg and a.jpg were two images sharing one YOLO label; /root/../outside/o.jpg kept its
    .. and passed Label Studio's document-root check."""
    (tmp_path / "list.txt").write_text(f"./a.jpg\na.jpg\n{tmp_path}/sub/../a.jpg\n/root/../outside/o.jpg\n"
                                       "s3://bucket/x//y.jpg\n")
    assert sorted(source_uris(str(tmp_path / "list.txt"))) == sorted(
        [str(tmp_path / "a.jpg")] * 3 + ["/outside/o.jpg", "s3://bucket/x//y.jpg"])  # object keys kept as written
    assert store(tmp_path / "out", tmp_path / "list.txt").images == 3


def test_a_sort_folder_left_by_a_killed_listing_is_removed_by_the_next(tmp_path, monkeypatch):
    """Issue 26, item 9: /tmp/labeler-sort-* left by a kill during listing was never cleaned."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    child = subprocess.Popen([sys.executable, "-c", (
        "import time; from labeler.io.external_sort import ExternalSort\n"
        "s = ExternalSort(); s.add(['b', 'a']); s._spill(); print('sorting', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**__import__("os").environ, "TMPDIR": str(tmp_path)})
    assert child.stdout.readline().strip() == "sorting"
    with ExternalSort():  # a live sort of another process is left alone
        assert len(list(tmp_path.glob("labeler-sort-*"))) == 2
    child.kill()
    child.wait()
    assert len(list(tmp_path.glob("labeler-sort-*"))) == 1  # the killed one's
    with ExternalSort() as sorter:
        sorter.add(["x"])
        assert list(sorter.merged()) == ["x"]
        assert len(list(tmp_path.glob("labeler-sort-*"))) == 1  # only this one
    assert list(tmp_path.glob("labeler-sort-*")) == []
