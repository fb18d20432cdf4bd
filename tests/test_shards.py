"""Shards: published whole, temporaries ignored, duplicates removed to one copy."""

import pyarrow.parquet as pq

from labeler.io.labels import LabelRows
from labeler.io.shards import finished_ids, list_shards, remove_duplicates, remove_temporaries, write_shard


def table(ids):
    rows = LabelRows()
    for image_id in ids:
        rows.add(image_id, f"/img/{image_id}.png", 4, 3, "ok", None)
    return rows.table()


def test_duplicates_across_shards_are_kept_once(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([1, 2, 3]))
    write_shard(out, table([3, 4]))
    write_shard(out, table([4, 5, 5]))
    assert remove_duplicates(out) == 3
    ids = [i for shard in list_shards(out) for i in pq.read_table(shard).column("image_id").to_pylist()]
    assert sorted(ids) == [1, 2, 3, 4, 5]
    assert remove_duplicates(out) == 0


def test_temporaries_are_not_shards_and_get_cleaned(tmp_path):
    out = str(tmp_path)
    write_shard(out, table([7]))
    (tmp_path / "labels" / "part-abc.parquet.tmp-123").write_bytes(b"half a parquet file")
    assert len(list_shards(out)) == 1 and finished_ids(out).tolist() == [7]
    assert remove_temporaries(out) == 1
    assert [p.name for p in (tmp_path / "labels").iterdir()] == [list_shards(out)[0].split("/")[-1]]
