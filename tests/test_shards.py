"""Shards: published whole with their COCO twins, counted from footers, each listed
image kept once, temporaries cleaned, unreadable shards set aside."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from labeler.io.coco import Category
from labeler.io.labels import Detections, LabelRows
from labeler.outdir.id_set import IdSet
from labeler.outdir.layout import remove_temporaries
from labeler.outdir.shards import (
    COUNTS_KEY,
    REMOVED_DIR,
    LabelCounts,
    ShardIndex,
    coco_twin,
    list_coco_shards,
    list_shards,
    read_shard,
    remove_orphan_twins,
    write_shard,
)

CATEGORIES = [Category(3, "cat"), Category(9, "dog")]
TOP_LEFT_PAIR = np.zeros((3, 4), np.uint8)
TOP_LEFT_PAIR[0, :2] = 1
TOP_LEFT_RLE = mask_utils.encode(np.asfortranarray(TOP_LEFT_PAIR))["counts"].decode()  # area 2, bbox [0, 0, 2, 1]


def table(ids, detections_per_image=0):
    rows = LabelRows()
    for image_id in ids:
        detections = [{"category_id": 3 if k % 2 else 9, "score": 0.9 - 0.1 * k, "bbox": [0, 0, 2, 1], "area": 2,
                       "rle": TOP_LEFT_RLE} for k in range(detections_per_image)]
        rows.add_ok(image_id=image_id, uri=f"/img/{image_id}.png", width=4, height=3,
                    detections=Detections.from_dicts(detections), proposals=5, transfer_bytes=100)
    return rows.table()


def shard_ids(out, folder=None):
    return sorted(i for shard in list_shards(out, folder) for i in pq.read_table(shard).column("image_id").to_pylist())


def index_of(out, listed):
    index = ShardIndex(out, IdSet.from_ids(np.asarray(listed)), IdSet.empty(max(listed) + 1))
    index.update()
    return index


def test_duplicates_across_shards_are_kept_once(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([1, 2, 3]), categories=CATEGORIES)
    write_shard(out, table([3, 4]), categories=CATEGORIES)
    write_shard(out, table([4, 5, 5]), categories=CATEGORIES)
    index = index_of(out, range(1, 6))
    assert index.finished() == 5 and index.counts.images_ok == 8  # before the pass: every row counted
    result = index.reconcile(CATEGORIES)
    assert (result.duplicates, result.not_listed) == (3, 0)
    assert shard_ids(out) == [1, 2, 3, 4, 5]
    assert index.counts == LabelCounts(images_ok=5, proposals=25, transfer_bytes_ok=500)
    assert index_of(out, range(1, 6)).reconcile(CATEGORIES).duplicates == 0
    assert [coco_twin(out, uri) for uri in list_shards(out)] == list_coco_shards(out)  # twins rewritten too
    assert sorted(i["id"] for uri in list_coco_shards(out) for i in COCO(uri.removeprefix("file://")).dataset["images"]
                  ) == [1, 2, 3, 4, 5]


def test_rows_of_images_no_longer_listed_leave_the_labels_but_are_kept_aside(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([1, 2, 3, 4]))
    write_shard(out, table([5, 6, 6]))
    index = index_of(out, [1, 3, 5, 6, 9])
    assert index.finished() == 4
    result = index.reconcile(CATEGORIES)
    assert (result.duplicates, result.not_listed) == (1, 2)
    assert shard_ids(out) == [1, 3, 5, 6]
    assert shard_ids(out, f"{out}/{REMOVED_DIR}") == [2, 4]
    assert index.counts.images_ok == 4
    assert index_of(out, [1, 3, 5, 6, 9]).reconcile(CATEGORIES) == result.__class__(0, 0)


def test_each_coco_shard_loads_in_pycocotools_and_holds_exactly_its_parquet_detections(tmp_path):
    out = str(tmp_path)
    rows = LabelRows()
    rows.add_ok(image_id=7, uri="/img/7.png", width=4, height=3, detections=Detections.from_dicts([
        {"category_id": 9, "score": 0.8, "bbox": [1, 0, 2, 3], "area": 6, "rle": mask_utils.encode(
            np.asfortranarray(np.pad(np.ones((3, 2), np.uint8), ((0, 0), (1, 1)))))["counts"].decode()}]), proposals=4)
    rows.add_error(image_id=8, uri="/img/8.png", error="decode failed: empty file")
    shard = write_shard(out, rows.table(), categories=CATEGORIES)
    write_shard(out, table([10, 11], detections_per_image=3), categories=CATEGORIES)
    parquet = {(r["image_id"], d["category_id"], round(d["score"], 6), d["rle"]) for uri in list_shards(out)
               for r in read_shard(uri).to_pylist() for d in r["detections"]}
    coco = set()
    for uri in list_coco_shards(out):
        loaded = COCO(uri)
        assert sorted(loaded.getCatIds()) == [3, 9]
        assert len({a["id"] for a in loaded.dataset["annotations"]}) == len(loaded.dataset["annotations"])
        for annotation in loaded.loadAnns(loaded.getAnnIds()):
            assert loaded.annToMask(annotation).sum() == annotation["area"]
            coco.add((annotation["image_id"], annotation["category_id"], annotation["score"],
                      annotation["segmentation"]["counts"]))
    assert coco == parquet and len(parquet) == 7
    first = json.loads(open(coco_twin(out, shard)).read())
    assert [i["id"] for i in first["images"]] == [7]  # error rows are only in the Parquet shard
    counts = json.loads(pq.ParquetFile(shard).schema_arrow.metadata[COUNTS_KEY])
    assert counts == {"images_ok": 1, "images_error": 1, "detections": 1, "proposals": 4, "transfer_bytes_ok": 0}


def test_a_coco_shard_without_its_parquet_twin_is_not_data_and_is_removed(tmp_path, monkeypatch):
    """A write task killed between the two files leaves only the COCO shard."""
    from labeler.io import storage

    out = str(tmp_path)
    kept = write_shard(out, table([1]), categories=CATEGORIES)
    publish = storage.write_bytes_atomic

    def killed_before_parquet(uri, data):
        if uri.endswith(".parquet"):
            raise KeyboardInterrupt
        publish(uri, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", killed_before_parquet)
    with pytest.raises(KeyboardInterrupt):
        write_shard(out, table([2]), categories=CATEGORIES)
    monkeypatch.undo()
    assert len(list((tmp_path / "coco").iterdir())) == 2 and list_coco_shards(out) == [coco_twin(out, kept)]
    assert remove_orphan_twins(out) == 1
    assert [p.name for p in (tmp_path / "coco").iterdir()] == [coco_twin(out, kept).rsplit("/", 1)[1]]


def test_temporaries_anywhere_in_out_are_not_data_and_get_cleaned(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([7]), categories=CATEGORIES)
    hex32 = "0123456789abcdef" * 2
    (tmp_path / "labels" / f"part-{hex32}.parquet.tmp-{hex32}").write_bytes(b"half a parquet file")
    (tmp_path / "coco" / f"part-{hex32}.json.tmp-{hex32}").write_bytes(b'{"images": [')
    (tmp_path / f"coco.json.tmp-{hex32}").write_text('{"images": [')
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / f"settings.json.tmp-{hex32}").write_text("{")
    (tmp_path / "notes.tmp-mine.txt").write_text("the user's, not a temporary of labeler")
    assert len(list_shards(out)) == 1 and index_of(out, [7]).finished() == 1
    assert remove_temporaries(out) == 4
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [list_shards(out)[0].split("/")[-1], coco_twin(out, list_shards(out)[0]).split("/")[-1], "notes.tmp-mine.txt"]
    )


def test_an_unreadable_shard_is_set_aside_and_its_images_are_not_done(tmp_path):
    out = str(tmp_path)
    good = write_shard(out, table([1, 2]))
    hex32 = "fedcba9876543210" * 2
    bad = tmp_path / "labels" / f"part-{hex32}.parquet"
    bad.write_bytes(b"")
    index = index_of(out, [1, 2, 3])
    assert list_shards(out) == [good] and index.finished() == 2 and index.shards == 1
    assert (tmp_path / "labels" / f"part-{hex32}.parquet.unreadable").exists()


def test_the_index_reads_each_shard_once_and_counts_from_footers(tmp_path, monkeypatch):
    from labeler.outdir import shards

    out = str(tmp_path)
    write_shard(out, table([1, 2], detections_per_image=2))
    index = index_of(out, [1, 2, 3])
    reads = []
    read = shards.read_ids_and_counts
    monkeypatch.setattr(shards, "read_ids_and_counts", lambda uri: reads.append(uri) or read(uri))
    write_shard(out, table([3], detections_per_image=1))
    index.update()
    index.update()
    assert len(reads) == 1 and index.finished() == 3
    assert index.counts == LabelCounts(images_ok=3, detections=5, proposals=15, transfer_bytes_ok=300)


def test_merged_coco_streams_into_out_and_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    """It was staged in /tmp/labeler-coco-*, which a kill left behind."""
    import tempfile

    from labeler.io import coco_writer
    from labeler.outdir import merged_coco as coco_merge

    out = tmp_path / "out"
    write_shard(str(out), table([1, 2]))
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    coco_merge.write_coco(str(out), [], out_id="f" * 32)
    assert '"labeler_out": "' + "f" * 32 in (out / "coco.json").read_text()[:200]

    def broken(*args):
        yield "{}"
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(coco_writer, "_annotation_entries", broken)
    (out / "coco.json").unlink()
    with pytest.raises(RuntimeError):
        coco_merge.write_coco(str(out), [])
    assert sorted(p.name for p in out.iterdir()) == ["labels"] and list(staging.iterdir()) == []


def test_while_a_pass_runs_the_index_follows_the_shards_it_publishes(tmp_path):
    import time

    out = str(tmp_path)
    index = index_of(out, [1, 2, 3, 4])
    with index.following(every=0.05):
        write_shard(out, table([1, 2]))
        deadline = time.monotonic() + 10
        while index.finished() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert index.finished() == 2 and index.shards == 1  # read during the pass, not after it
        write_shard(out, table([3]))
    index.update()
    assert index.finished() == 3 and index.shards == 2


def test_a_write_call_cuts_its_rows_into_shards_of_about_rows_per_shard():
    from labeler.actors.writer import split_rows

    assert [t.num_rows for t, _ in split_rows(table(range(7)), 1000)] == [7]
    assert [t.num_rows for t, _ in split_rows(table(range(25)), 10)] == [12, 13]
    parts = split_rows(table(range(3100)), 1000, kept=table(range(3100)))
    assert [t.num_rows for t, _ in parts] == [1033, 1034, 1033]
    assert [i for t, _ in parts for i in t.column("image_id").to_pylist()] == list(range(3100))
    assert all(t.column("image_id").equals(k.column("image_id")) for t, k in parts)


def test_class_names_read_back_from_a_parquet_shard_alone(tmp_path):
    """A shard names its classes: per detection (for SQL readers) and in its footer (for the whole list)."""
    out = str(tmp_path)
    shard = write_shard(out, table([1, 2, 3], detections_per_image=2), categories=CATEGORIES)
    loaded = pq.read_table(shard)  # nothing but the Parquet file
    names = {c["id"]: c["name"] for c in json.loads(loaded.schema.metadata[b"labeler.categories"])}
    assert names == {c.id: c.name for c in CATEGORIES}
    detections = [d for row in loaded.to_pylist() for d in row["detections"]]
    assert len(detections) == 6 and all(d["category"] == names[d["category_id"]] for d in detections)
    index = index_of(out, [1, 2])  # image 3 left the source: its shard is written anew, names kept
    index.reconcile(CATEGORIES)
    for uri in list_shards(out):
        rewritten = pq.read_table(uri)
        assert json.loads(rewritten.schema.metadata[b"labeler.categories"]) == [
            {"id": c.id, "name": c.name} for c in CATEGORIES]
        assert all(d["category"] == names[d["category_id"]] for r in rewritten.to_pylist() for d in r["detections"])
    removed = pq.read_table(list_shards(out, f"{out}/{REMOVED_DIR}")[0])
    assert b"labeler.categories" in removed.schema.metadata
    assert all(d["category"] for r in removed.to_pylist() for d in r["detections"])


def test_error_reasons_are_tallied_in_footers_and_summed_by_the_index(tmp_path):
    out = str(tmp_path)
    rows = LabelRows()
    for image_id, reason in [(1, "read failed: no such file"), (2, "read failed: no such file"),
                             (3, "decode failed: cannot identify image file '/data/3.jpg'")]:
        rows.add_error(image_id=image_id, uri=f"/data/{image_id}.jpg", error=reason)
    rows.add_ok(image_id=4, uri="/data/4.jpg", width=4, height=3)
    write_shard(out, rows.table(), categories=CATEGORIES)
    more = LabelRows()
    more.add_error(image_id=5, uri="/data/5.jpg", error="decode failed: cannot identify image file '/data/5.jpg'")
    write_shard(out, more.table(), categories=CATEGORIES)
    index = index_of(out, [1, 2, 3, 4, 5])
    assert index.errors.errors == 4
    top = index.errors.most_common(5)
    assert [(kind, entry.count) for kind, entry in top] == [
        ("decode failed: cannot identify image file …", 2), ("read failed: no such file", 2)]
    assert top[0][1].example_reason.startswith("decode failed: cannot identify image file '/data/")
    assert index_of(out, [1, 2, 4, 5]).reconcile(CATEGORIES).not_listed == 1  # image 3 left the source
    again = index_of(out, [1, 2, 4, 5])
    assert [(kind, e.count) for kind, e in again.errors.most_common(5)] == [
        ("read failed: no such file", 2), ("decode failed: cannot identify image file …", 1)]


def test_a_writer_that_cannot_write_its_labels_reports_its_own_error(tmp_path):
    """Issue 26, item 6: a class name holding a lone surrogate failed every write task, and the run ended as
    "2 images were still unlabelled after 3 passes" with the writer's error never shown."""
    from labeler.actors.writer import LabelShardSink

    class Tracker:  # the tracker actor's interface: report_fatal.remote(stage, message)
        def __init__(self):
            self.fatal = []
            self.report_fatal = self
            self.add = self

        def remote(self, *args):
            self.fatal.append(args)

    rows = LabelRows()
    rows.add_ok(image_id=1, uri=str(tmp_path / "a.jpg"), width=4, height=4)
    tracker = Tracker()
    sink = LabelShardSink(str(tmp_path / "out"), 10, [Category(1, "bad-\ud800")], str(tmp_path), tracker=tracker)
    with pytest.raises(UnicodeEncodeError):
        sink.write([rows.table()], None)
    assert [args[0] for args in tracker.fatal] == ["write"]
    assert tracker.fatal[0][1].startswith("writing a label shard failed: UnicodeEncodeError:")
    assert not list((tmp_path / "out").rglob("part-*"))


def kept_for(ids):
    """Kept proposals of images ``ids``: each image's one embedding holds its id."""
    import torch

    from labeler.io.kept_proposals import KeptProposals, kept_table, with_footer
    from labeler.io.proposal_payload import encode_proposals

    kept = [KeptProposals(encode_proposals(torch.full((1, 4, 4), 5.0), torch.tensor([0.9]), (8, 8)),
                          np.full((1, 2), float(i), np.float32)) for i in ids]
    return with_footer(kept_table(list(ids), kept, "float32"),
                       {"embedding_dtype": "float32", "embedding_dim": 2, "encoder": "e", "sam2": "s"})


def test_kept_proposals_follow_their_shard_through_every_rewrite(tmp_path):
    from labeler.io.kept_proposals import kept_of_row
    from labeler.outdir.layout import remove_own_entries
    from labeler.outdir.shards import kept_twin, read_kept_twin

    out = str(tmp_path)
    write_shard(out, table([1, 2, 3]), categories=CATEGORIES, kept=kept_for([1, 2, 3]))
    write_shard(out, table([3, 4, 9]), categories=CATEGORIES, kept=kept_for([3, 4, 9]))
    with pytest.raises(ValueError, match="the shard's rows, in order"):
        write_shard(out, table([5, 6]), categories=CATEGORIES, kept=kept_for([6, 5]))
    result = index_of(out, [1, 2, 3, 4]).reconcile(CATEGORIES)  # a repeat of 3, and 9 left the source
    assert (result.duplicates, result.not_listed) == (1, 1)
    for shard in list_shards(out):
        ids = pq.read_table(shard).column("image_id").to_pylist()
        kept = read_kept_twin(out, shard)
        assert kept.column("image_id").to_pylist() == ids
        assert [kept_of_row(row, "float32", 2).embeddings[0, 0] for row in kept.to_pylist()] == ids
    assert sorted(p.name for p in (tmp_path / "proposals").iterdir()) == sorted(
        kept_twin(out, shard).rsplit("/", 1)[1] for shard in list_shards(out))
    (tmp_path / "proposals" / "part-0123456789abcdef0123456789abcdef.parquet").write_bytes(b"orphan")
    assert remove_orphan_twins(out) == 1
    remove_own_entries(out, None)  # --overwrite
    assert not (tmp_path / "proposals").exists()
