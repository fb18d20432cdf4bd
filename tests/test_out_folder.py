"""The output folder: labeler resumes its own runs, refuses foreign folders, and
``--overwrite`` removes only what it can prove it wrote."""

import json

import pytest

from labeler.errors import LabelerError
from labeler.io.labels import LabelRows
from labeler.outdir import layout as out_folder

LOCK_DIR = "_state/lock"  # where OUT keeps its lock claims (docs/formats.md)
from labeler.outdir.merged_coco import write_coco
from labeler.outdir.shards import REMOVED_DIR, list_shards, write_shard

SETTINGS = {"bank_hash": "abc", "points_per_side": 32}
HEX = "0123456789abcdef" * 2


def rows(ids):
    table = LabelRows()
    for image_id in ids:
        table.add_ok(image_id=image_id, uri=f"/img/{image_id}.png", width=4, height=3)
    return table.table()


def finished_run(out) -> str:
    """An OUT as a finished run leaves it: marker, shards, coco.json and run.json carrying the out id."""
    out_id = out_folder.prepare(str(out), SETTINGS, overwrite=False)
    write_shard(str(out), rows([1, 2]))
    write_shard(str(out), rows([3]), folder=f"{out}/{REMOVED_DIR}")
    write_coco(str(out), [], out_id=out_id)
    (out / "run.json").write_text(json.dumps({"out_id": out_id}))
    return out_id


def test_same_settings_resume_with_the_same_out_id(tmp_path):
    out_id = finished_run(tmp_path)
    assert out_folder.prepare(str(tmp_path), SETTINGS, overwrite=False) == out_id


def test_other_settings_are_refused_without_overwrite(tmp_path):
    finished_run(tmp_path)
    with pytest.raises(LabelerError, match=r"points_per_side: 32 -> 16.*--overwrite"):
        out_folder.prepare(str(tmp_path), dict(SETTINGS, points_per_side=16), overwrite=False)


def test_overwrite_removes_only_what_labeler_wrote(tmp_path):
    old_id = finished_run(tmp_path)
    (tmp_path / "labels" / "notes.txt").write_text("the user's")
    (tmp_path / "labels" / "part-from-another-tool.parquet").write_text("the user's")
    (tmp_path / "run.json").write_text(json.dumps({"mine": True}))  # replaced by the user: no out id
    (tmp_path / "README.md").write_text("the user's")
    new_id = out_folder.prepare(str(tmp_path), dict(SETTINGS, points_per_side=16), overwrite=True)
    assert new_id != old_id
    assert list_shards(str(tmp_path)) == [] and list_shards(str(tmp_path), f"{tmp_path}/{REMOVED_DIR}") == []
    assert not (tmp_path / "coco.json").exists()  # carried the old out id
    for kept in ("labels/notes.txt", "labels/part-from-another-tool.parquet", "README.md"):
        assert (tmp_path / kept).read_text() == "the user's"
    assert json.loads((tmp_path / "run.json").read_text()) == {"mine": True}
    assert out_folder.read_settings(str(tmp_path)) == {"out_id": new_id, "settings": dict(SETTINGS, points_per_side=16)}


def test_a_users_coco_json_in_a_labeler_folder_survives_overwrite(tmp_path):
    finished_run(tmp_path)
    (tmp_path / "coco.json").write_text(json.dumps({"info": {"description": "ground truth"}, "images": []}))
    out_folder.prepare(str(tmp_path), SETTINGS, overwrite=True)
    assert json.loads((tmp_path / "coco.json").read_text())["info"] == {"description": "ground truth"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_folder_is_refused_and_untouched(tmp_path, overwrite):
    (tmp_path / "coco.json").write_text("{}")
    (tmp_path / "labels").mkdir()
    with pytest.raises(LabelerError, match="holds no labeler run") as error:
        out_folder.prepare(str(tmp_path), SETTINGS, overwrite=overwrite)
    assert "--overwrite" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "labels"]


def test_a_kill_during_the_first_settings_write_leaves_a_usable_folder(tmp_path):
    (tmp_path / LOCK_DIR).mkdir(parents=True)
    (tmp_path / "_state" / f"settings.json.tmp-{HEX}").write_text('{"format": "labeler-run-out')
    out_folder.check_not_foreign(str(tmp_path))
    assert out_folder.remove_temporaries(str(tmp_path)) == 1
    out_id = out_folder.prepare(str(tmp_path), SETTINGS, overwrite=False)
    assert out_folder.read_settings(str(tmp_path))["out_id"] == out_id


def test_a_corrupt_marker_is_a_clear_error(tmp_path):
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state" / "settings.json").write_text("{not json")
    with pytest.raises(LabelerError, match="settings.json: corrupt"):
        out_folder.prepare(str(tmp_path), SETTINGS, overwrite=False)
