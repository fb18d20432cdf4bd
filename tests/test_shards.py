"""Shards: published whole, temporaries cleaned, each listed image kept once, unreadable shards set aside."""

import numpy as np
import pyarrow.parquet as pq

from labeler.io.labels import LabelRows
from labeler.io.out_folder import remove_temporaries
from labeler.io.shards import (
    REMOVED_DIR,
    finished_ids,
    list_shards,
    reconcile,
    set_aside_unreadable,
    write_shard,
)


def table(ids):
    rows = LabelRows()
    for image_id in ids:
        rows.add(image_id, f"/img/{image_id}.png", 4, 3, "ok", None)
    return rows.table()


def shard_ids(out, folder=None):
    return sorted(i for shard in list_shards(out, folder) for i in pq.read_table(shard).column("image_id").to_pylist())


def test_duplicates_across_shards_are_kept_once(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([1, 2, 3]))
    write_shard(out, table([3, 4]))
    write_shard(out, table([4, 5, 5]))
    result = reconcile(out, np.arange(1, 6))
    assert (result.duplicates, result.not_listed) == (3, 0)
    assert shard_ids(out) == [1, 2, 3, 4, 5]
    assert reconcile(out, np.arange(1, 6)).duplicates == 0


def test_rows_of_images_no_longer_listed_leave_the_labels_but_are_kept_aside(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([1, 2, 3, 4]))
    write_shard(out, table([5, 6, 6]))
    result = reconcile(out, np.array([1, 3, 5, 6, 9]))
    assert (result.duplicates, result.not_listed) == (1, 2)
    assert shard_ids(out) == [1, 3, 5, 6]
    assert shard_ids(out, f"{out}/{REMOVED_DIR}") == [2, 4]
    assert reconcile(out, np.array([1, 3, 5, 6, 9])) == result.__class__(0, 0)


def test_temporaries_anywhere_in_out_are_not_data_and_get_cleaned(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([7]))
    hex32 = "0123456789abcdef" * 2
    (tmp_path / "labels" / f"part-{hex32}.parquet.tmp-{hex32}").write_bytes(b"half a parquet file")
    (tmp_path / f"coco.json.tmp-{hex32}").write_text('{"images": [')
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / f"settings.json.tmp-{hex32}").write_text("{")
    (tmp_path / "notes.tmp-mine.txt").write_text("the user's, not a temporary of labeler")
    assert len(list_shards(out)) == 1 and finished_ids(out).tolist() == [7]
    assert remove_temporaries(out) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [list_shards(out)[0].split("/")[-1], "notes.tmp-mine.txt"]
    )


def test_an_unreadable_shard_is_set_aside_and_its_images_are_not_done(tmp_path):
    out = str(tmp_path)
    good = write_shard(out, table([1, 2]))
    hex32 = "fedcba9876543210" * 2
    (tmp_path / "labels" / f"part-{hex32}.parquet").write_bytes(b"")  # zero bytes
    (tmp_path / "labels" / f"part-{'1' * 32}.parquet").write_bytes(b"PAR1 not really")
    moved = set_aside_unreadable(out)
    assert len(moved) == 2 and all(m.endswith(".parquet.unreadable") for m in moved)
    assert list_shards(out) == [good] and finished_ids(out).tolist() == [1, 2]


def test_coco_json_streams_into_out_and_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    """It was staged in /tmp/labeler-coco-*, which a kill left behind."""
    import tempfile

    from labeler.io import coco_writer

    out = tmp_path / "out"
    write_shard(str(out), table([1, 2]))
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    coco_writer.write_coco(str(out), [], out_id="f" * 32)
    assert '"labeler_out": "' + "f" * 32 in (out / "coco.json").read_text()[:200]

    def broken(*args):
        yield "{}"
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(coco_writer, "_annotation_entries", broken)
    (out / "coco.json").unlink()
    try:
        coco_writer.write_coco(str(out), [])
    except RuntimeError:
        pass
    assert sorted(p.name for p in out.iterdir()) == ["labels"] and list(staging.iterdir()) == []
