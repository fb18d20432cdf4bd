"""labeler run end to end on generated images with random:tiny models and a sparse grid."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from labeler.bank.build import build_bank
from labeler.bank.file import load_bank
from labeler.errors import LabelerError, ModelLoadError
from labeler.outdir.shards import list_shards
from labeler.run.config import RunConfig
from labeler.run.driver import run_labeling
from labeler.synthetic import generate_dataset

from .conftest import BackgroundRun, assert_coco_shards_match_parquet, load_json, source_uris, stored_listing

TINY_RUN = dict(sam2="random:tiny", points_per_side=4, batch_size=4, rows_per_shard=4)


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory, refs_mixed):
    bank = build_bank(str(refs_mixed), str(refs_mixed.parent / "images"), dinov2="random:tiny", sam2="random:tiny",
                      device="cpu")
    path = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    bank.save(str(path))
    return str(path)


def make_targets(folder: Path, count: int, seed: int = 11) -> Path:
    """``count`` generated images plus three broken files under ``folder/images``."""
    generate_dataset(folder, count, seed=seed, image_format="jpg")
    images = folder / "images"
    (images / "empty.png").write_bytes(b"")
    (images / "not-an-image.jpg").write_text("<html>404</html>")
    good = next(images.rglob("img_*.jpg")).read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return images


def read_rows(out: Path) -> list[dict]:
    return [row for shard in list_shards(str(out)) for row in pq.read_table(shard).to_pylist()]


def test_every_image_exactly_once_and_parquet_agrees_with_coco(tmp_path, ray_session, bank_path):
    images = make_targets(tmp_path / "t", 10)
    out = tmp_path / "out"
    summary = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))

    listing = stored_listing(out)
    rows = read_rows(out)
    assert sorted(listing) == sorted(source_uris(str(images))) and len(listing) == 13
    assert sorted(listing.values()) == list(range(1, 14))  # sequential ids, in URI order
    assert [listing[uri] for uri in sorted(listing)] == list(range(1, 14))
    assert sorted((r["uri"], r["image_id"]) for r in rows) == sorted(listing.items())  # each once, none lost
    assert all(r["file_name"] == Path(r["uri"]).relative_to(images).as_posix() for r in rows)  # relative to the folder
    by_uri = {r["uri"]: r for r in rows}
    assert by_uri[str(images / "empty.png")]["error"] == "decode failed: empty file"
    assert by_uri[str(images / "not-an-image.jpg")]["error"] == "decode failed: not an image file"
    assert by_uri[str(images / "truncated.jpg")]["error"].startswith("decode failed: corrupt or truncated image")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 10 and all(r["width"] == 320 and r["height"] == 256 and r["error"] is None for r in ok)
    assert all(0 <= r["proposals"] <= 16 and r["transfer_bytes"] > 256 * 256 * 3 for r in ok)
    assert all(r["proposals"] == 0 and r["detections"] == [] for r in rows if r["status"] == "error")
    assert summary.counts.images_ok == 10 and summary.counts.images_error == 3
    assert summary.images_processed == 13 and summary.images_skipped == 0
    assert assert_coco_shards_match_parquet(out) == summary.counts.detections and summary.merged_coco

    coco = COCO(str(out / "coco.json"))
    assert sorted(coco.getImgIds()) == sorted(r["image_id"] for r in ok)
    assert sorted(coco.getCatIds()) == load_bank(bank_path).category_ids
    detections = [(r["image_id"], d) for r in ok for d in r["detections"]]
    assert len(coco.getAnnIds()) == len(detections) == summary.counts.detections > 0
    annotations = sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: (a["image_id"], -a["score"], a["area"]))
    for annotation, (image_id, detection) in zip(annotations, sorted(detections, key=lambda d: (d[0], -d[1]["score"], d[1]["area"]))):
        assert annotation["image_id"] == image_id and annotation["category_id"] == detection["category_id"]
        mask = coco.annToMask(annotation)
        assert mask.shape == (256, 320) and mask.sum() == detection["area"] == annotation["area"]
        x, y, w, h = detection["bbox"]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
        assert 0 < detection["score"] <= 1
        assert mask_utils.area({"size": [256, 320], "counts": detection["rle"].encode()}) == detection["area"]

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"]["images_ok"] == 10 and manifest["counts"]["images_error"] == 3
    assert manifest["bank"]["content_hash"] == load_bank(bank_path).content_hash
    assert manifest["models"] == {"sam2": "random:tiny", "dinov2": "random:tiny"}
    assert manifest["versions"]["labeler"] and manifest["images_per_second"] > 0
    performance = manifest["performance"]
    assert performance["sam2_to_dinov2_bytes_per_image"] == round(sum(r["transfer_bytes"] for r in ok) / 10)
    assert performance["driver_peak_rss_mb"] > 0

    # The same command again resumes: nothing to redo, nothing rewritten.
    shards = {p: Path(p).stat().st_mtime_ns for p in list_shards(str(out))}
    again = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))
    assert again.images_processed == 0 and again.images_skipped == 13
    assert {p: Path(p).stat().st_mtime_ns for p in list_shards(str(out))} == shards


def test_hostile_folder_every_file_once_with_its_reason(tmp_path, ray_session, bank_path):
    from .test_hostile_images import BROKEN, USABLE

    folder = tmp_path / "hostile"
    (folder / "sub dir ü").mkdir(parents=True)
    for name, (make, _) in USABLE.items():
        (folder / "sub dir ü" / name).write_bytes(make())
    for name, (make, _) in BROKEN.items():
        (folder / name).write_bytes(make())
    (folder / "folder.jpg").mkdir()
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'sub dir ü' / 'gray.png'}\n{folder / 'gone.jpg'}\n")

    out = tmp_path / "out"
    run_labeling(RunConfig(bank=bank_path, images=str(folder), out=str(out), max_pixels=10_000_000, **TINY_RUN))
    rows = {Path(r["uri"]).name: r for r in read_rows(out)}
    assert len(read_rows(out)) == len(rows) == len(USABLE) + len(BROKEN) + 2
    for name, (_, (width, height)) in USABLE.items():
        assert (rows[name]["status"], rows[name]["width"], rows[name]["height"]) == ("ok", width, height), name
        for detection in rows[name]["detections"]:
            x, y, w, h = detection["bbox"]
            assert x + w <= width and y + h <= height  # labels live in the EXIF-rotated frame
    for name, (_, reason) in BROKEN.items():
        assert rows[name]["status"] == "error" and rows[name]["error"].startswith(reason), name
    assert rows["folder.jpg"]["error"] == "read failed: is a folder, not a file"
    assert rows["loop.jpg"]["error"].startswith("read failed: ")

    from_list = run_labeling(RunConfig(bank=bank_path, images=str(listing), out=str(tmp_path / "out2"), **TINY_RUN))
    assert (from_list.counts.images_ok, from_list.counts.images_error) == (1, 1)
    gone = [r for r in read_rows(tmp_path / "out2") if r["status"] == "error"]
    assert gone[0]["error"] == "read failed: no such file"


def test_other_settings_refused_unless_overwrite(tmp_path, ray_session, bank_path):
    images = tmp_path / "t" / "images"
    generate_dataset(tmp_path / "t", 2, seed=2)
    out = tmp_path / "out"
    run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))
    changed = dict(TINY_RUN, points_per_side=3)
    with pytest.raises(LabelerError, match="points_per_side: 4 -> 3.*--overwrite"):
        run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **changed))
    summary = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), overwrite=True, **changed))
    assert summary.images_processed == 2 and len(read_rows(out)) == 2


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_output_folder_refused_even_with_overwrite(tmp_path, bank_path, overwrite):
    (tmp_path / "out" / "labels").mkdir(parents=True)
    (tmp_path / "out" / "labels" / "mine.txt").write_text("precious")
    (tmp_path / "out" / "coco.json").write_text('{"precious": true}')
    generate_dataset(tmp_path / "t", 1, seed=2)
    with pytest.raises(LabelerError, match=r"is not empty \(coco.json, labels\) and holds no labeler run") as error:
        run_labeling(RunConfig(bank=bank_path, images=str(tmp_path / "t" / "images"), out=str(tmp_path / "out"),
                               overwrite=overwrite, **TINY_RUN))
    assert "--overwrite" not in str(error.value)  # never suggest a flag that would delete foreign files
    assert (tmp_path / "out" / "labels" / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coco.json", "labels"]


def test_unloadable_models_fail_before_any_image_is_read(tmp_path, bank_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ModelLoadError, match="random:huge"):
        run_labeling(RunConfig(bank=bank_path, images=str(missing), out=str(tmp_path / "o"), sam2="random:huge"))
    bank = load_bank(bank_path)
    bank.encoder = "random:nope"
    bank.content_hash = ""
    bad_bank = tmp_path / "other-encoder.safetensors"
    type(bank)(**{**bank.__dict__}).save(str(bad_bank))
    with pytest.raises(ModelLoadError, match="random:nope"):
        run_labeling(RunConfig(bank=str(bad_bank), images=str(missing), out=str(tmp_path / "o"), sam2="random:tiny"))
    assert not (tmp_path / "o").exists()


def test_killed_run_resumes_to_each_image_exactly_once(tmp_path, bank_path, run_cli):
    """Also: a second run on the same OUT is refused while the first holds it, and the
    lock the SIGKILLed run leaves behind does not stop the rerun."""
    images = make_targets(tmp_path / "t", 40, seed=5)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "labeler", "run", "--bank", bank_path, "--images", str(images),
               "--out", str(out), "--sam2", "random:tiny", "--points-per-side", "4", "--batch-size", "2",
               "--rows-per-shard", "2", "--max-error-rate", "0.1"]  # 3 broken files of 43
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not (out / "_state" / "listing.json").exists():
        time.sleep(0.2)
    concurrent = run_cli(*command[3:])  # the first run holds OUT from before it lists the source
    assert concurrent.exit_code == 2 and "is in use by another labeler run (pid" in concurrent.stderr
    while time.monotonic() < deadline and process.poll() is None and not list_shards(str(out)):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; give it more images"
    os.killpg(process.pid, signal.SIGKILL)  # the driver and everything it started
    process.wait()
    first_shards = set(list_shards(str(out)))
    done_before = {r["image_id"] for r in read_rows(out)}
    assert 0 < len(done_before) < 43

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = read_rows(out)
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(stored_listing(out).values())
    assert len(ids) == len(set(ids)) == 43
    assert first_shards <= set(list_shards(str(out)))  # finished work kept, not redone
    assert assert_coco_shards_match_parquet(out) == json.loads((out / "run.json").read_text())["counts"]["detections"]
    manifest = json.loads((out / "run.json").read_text())
    # Workers of the killed run may publish a few more shards before they notice: those count as done too.
    assert manifest["counts"]["images_skipped_as_done"] >= len(done_before)
    assert manifest["counts"]["images_skipped_as_done"] + manifest["counts"]["images_processed_this_run"] == 43
    assert not [p for p in (out / "labels").iterdir() if ".tmp-" in p.name]


def test_a_killed_worker_process_is_replaced_by_the_next_pass(tmp_path, ray_session, bank_path):
    """The only SAM2 actor's process dies (out of host memory, a segfault in a kernel): the pass
    stops moving, is abandoned, and the next pass labels what was lost; each image once. The actor is
    found the way the watchdog finds it, by the class name the pipeline gives it."""
    from ray._private.state import actors

    from labeler.run.pipeline import MODEL_STAGE_ACTORS
    from labeler.run.watchdog import actor_states

    images = generate_dataset(tmp_path / "t", 30, seed=12, image_format="jpg",
                              image_size=(160, 128)).parent / "images"
    out = tmp_path / "out"
    config = RunConfig(bank=bank_path, images=str(images), out=str(out), replan_after=3,
                       **dict(TINY_RUN, points_per_side=8, batch_size=2, rows_per_shard=2))
    job = BackgroundRun(config)
    deadline, workers = time.monotonic() + 120, []
    while not workers and job.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)  # killed as soon as it is up: a run this small would finish first
        alive = [i for i, state in actor_states(MODEL_STAGE_ACTORS["sam2"]).items() if state == "ALIVE"]
        workers = [actors()[i] for i in alive]
    assert workers and job.thread.is_alive(), f"no SAM2 actor to kill; the run: {job.outcome!r}"
    os.kill(workers[0]["Pid"], signal.SIGKILL)
    summary = job.finish()
    ids = [r["image_id"] for r in read_rows(out)]
    assert len(ids) == len(set(ids)) == 30 and summary.counts.images_ok == 30


def test_bank_from_another_encoder_is_refused(tmp_path, bank_path):
    bank = load_bank(bank_path)
    edited = type(bank)(**{**bank.__dict__, "encoder": "random:small", "content_hash": ""})
    edited.save(str(tmp_path / "other.safetensors"))
    with pytest.raises(LabelerError, match="32-d but its encoder random:small gives 384-d"):
        run_labeling(RunConfig(bank=str(tmp_path / "other.safetensors"), images=str(tmp_path), out=str(tmp_path / "o"),
                               sam2="random:tiny"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("mount_options, reason", [
    ("size=96k", "writing to .* failed: No space left on device.*rerun"),
    ("ro,size=1m", "--out .* is on a Read-only file system"),  # refused before any work
])
def test_full_or_read_only_disk_is_a_clear_error_and_leaves_no_partial_shard(
    tmp_path, ray_session, bank_path, mount_options, reason
):
    images = make_targets(tmp_path / "t", 16)
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(disk)]).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        with pytest.raises(LabelerError, match=reason):
            run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(disk / "out"),
                                   **dict(TINY_RUN, rows_per_shard=2)))
        for shard in list_shards(str(disk / "out")):
            pq.read_table(shard)  # every published shard is whole
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_actors_use_the_bank_the_run_checked_even_if_it_is_rebuilt_in_place(tmp_path, ray_session, bank_path,
                                                                             monkeypatch):
    """The file is replaced after the driver read it: labels and run.json must both come from the original."""
    import labeler.run.driver

    original = load_bank(bank_path)
    rebuilt = type(original)(**{**original.__dict__, "content_hash": "",
                                "categories": [type(c)(c.id + 100, c.name) for c in original.categories]})
    path = tmp_path / "bank.safetensors"
    path.write_bytes(Path(bank_path).read_bytes())
    read_source_before = labeler.run.driver.read_source

    def rebuild_then_list(*args, **kwargs):
        rebuilt.save(str(path))  # as `labeler build-bank --out` the same path would, mid-run
        return read_source_before(*args, **kwargs)

    monkeypatch.setattr(labeler.run.driver, "read_source", rebuild_then_list)
    images = generate_dataset(tmp_path / "t", 4, seed=8, image_format="jpg").parent / "images"
    out = tmp_path / "out"
    run_labeling(RunConfig(bank=str(path), images=str(images), out=str(out), **TINY_RUN))
    categories = [d["category_id"] for r in read_rows(out) for d in r["detections"]]
    assert categories and set(categories) <= {c.id for c in original.categories}
    assert json.loads((out / "run.json").read_text())["bank"]["content_hash"] == original.content_hash


def test_a_rerun_reuses_the_stored_listing_and_picks_up_added_images_when_asked(tmp_path, ray_session,
                                                                                  bank_path, monkeypatch):
    from labeler.io import prefix_listing

    images = generate_dataset(tmp_path / "t", 3, seed=12, image_format="jpg", subfolders=False).parent / "images"
    out = tmp_path / "out"
    run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))
    listed = stored_listing(out)
    (images / "zz-added.jpg").write_bytes(next(images.iterdir()).read_bytes())
    walk = prefix_listing.iter_local

    def must_not_list(*args):  # a generator, as the real one: it fails only when the listing is read
        raise AssertionError("the source was listed again")
        yield

    monkeypatch.setattr(prefix_listing, "iter_local", must_not_list)
    again = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))
    assert (again.images_listed, again.images_processed, again.images_skipped) == (3, 0, 3)
    assert stored_listing(out) == listed

    monkeypatch.setattr(prefix_listing, "iter_local", walk)
    relisted = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), relist=True, **TINY_RUN))
    assert (relisted.images_listed, relisted.images_processed, relisted.images_skipped) == (4, 1, 3)
    assert stored_listing(out) == {**listed, str(images / "zz-added.jpg"): 4}
    assert sorted(r["image_id"] for r in read_rows(out)) == [1, 2, 3, 4]
    assert assert_coco_shards_match_parquet(out) == relisted.counts.detections


def test_rerun_on_a_changed_source_keeps_the_labels_in_step_with_it(tmp_path, ray_session, bank_path):
    """With --relist, images removed or renamed since the first run leave the labels (kept aside), new
    names are labelled, and a zero-byte shard found in OUT is set aside instead of failing every rerun."""
    images = generate_dataset(tmp_path / "t", 6, seed=9, image_format="jpg", subfolders=False).parent / "images"
    out = tmp_path / "out"
    run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), **TINY_RUN))
    first = sorted(images.iterdir())
    first[0].unlink()
    first[1].rename(images / "renamed.jpg")
    (out / "labels" / f"part-{'e' * 32}.parquet").write_bytes(b"")

    summary = run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(out), relist=True, **TINY_RUN))
    listed = list(stored_listing(out).values())
    rows = read_rows(out)
    assert sorted(r["image_id"] for r in rows) == sorted(listed) and len(listed) == 5
    assert summary.images_processed == 1 and summary.rows_not_listed == 2
    removed = [r for shard in list_shards(str(out), str(out / "_state" / "removed"))
               for r in pq.read_table(shard).to_pylist()]
    assert sorted(Path(r["uri"]).name for r in removed) == sorted(p.name for p in first[:2])
    assert (out / "labels" / f"part-{'e' * 32}.parquet.unreadable").exists()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"]["images_listed"] == 5 == manifest["counts"]["images_ok"]
    assert manifest["counts"]["rows_moved_not_in_source"] == 2
    assert len(COCO(str(out / "coco.json")).getImgIds()) == 5
    assert_coco_shards_match_parquet(out)


def test_a_run_that_stops_moving_is_stopped_with_the_stage_named(tmp_path, ray_session, bank_path):
    """A store that accepts the connection and never answers, and reads allowed to wait an hour:
    the watchdog stops the run after --stall-timeout, naming the stage; the lock is released."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    images = generate_dataset(tmp_path / "t", 3, seed=3, subfolders=False).parent / "images"
    listing = tmp_path / "list.txt"
    hung = f"http://127.0.0.1:{server.getsockname()[1]}/never-answers.jpg"
    listing.write_text("\n".join([hung, *map(str, sorted(images.iterdir()))]) + "\n")
    out = tmp_path / "out"
    started = time.monotonic()
    try:
        with pytest.raises(LabelerError, match=r"no progress for 8 s: the read \+ decode stage stalled \(rows done: "
                                               r"read \+ decode 0, .*; finished shards are kept, rerun"):
            run_labeling(RunConfig(bank=bank_path, images=str(listing), out=str(out), read_timeout=3600,
                                   stall_timeout=8, **TINY_RUN))
    finally:
        server.close()
    assert time.monotonic() - started < 120
    assert os.listdir(out / "_state" / "lock") == []


def test_file_names_are_relative_to_the_image_root_and_pycocotools_finds_every_image(
        tmp_path, ray_session, bank_path, monkeypatch):
    """Paths given relative to the working folder; the COCO output works with an image root, as
    supervision, Detectron2 or MMDetection use it, and keeps the COCO source's own file_name."""
    gt = generate_dataset(tmp_path / "data" / "targets", 6, seed=5, image_format="jpg")
    monkeypatch.chdir(tmp_path / "data")
    out = tmp_path / "out"
    summary = run_labeling(RunConfig(bank=bank_path, images="targets/annotations.json", image_root="targets/images",
                                     out=str(out), **TINY_RUN))
    root = tmp_path / "data" / "targets" / "images"
    assert summary.source_root == str(root) and load_json(out / "run.json")["source_root"] == str(root)
    coco = COCO(str(out / "coco.json"))
    assert coco.dataset["info"]["image_root"] == str(root)
    images = coco.loadImgs(coco.getImgIds())
    source = {image["id"]: image["file_name"] for image in load_json(gt)["images"]}
    assert {image["id"]: image["file_name"] for image in images} == source and len(source) == 6
    assert all("/" in name and not name.startswith("/") for name in source.values())  # sub-folders, relative
    monkeypatch.chdir(tmp_path)  # a reader elsewhere, given only the image root
    assert all(os.path.isfile(os.path.join(str(root), image["file_name"])) for image in images)
    assert all(image["uri"] == str(root / image["file_name"]) for image in images)
    rows = read_rows(out)
    assert {r["image_id"]: r["file_name"] for r in rows} == source
    assert all(r["uri"] == str(root / r["file_name"]) for r in rows)


def test_exit_status_and_summary_when_every_image_fails(tmp_path, ray_session, bank_path, run_cli):
    """A COCO source without its --image-root: every image is an error; the run says so and exits 1."""
    gt = generate_dataset(tmp_path / "t", 3, seed=5, image_format="jpg")
    first = load_json(gt)["images"][0]["file_name"]
    result = run_cli("run", "--bank", bank_path, "--images", gt, "--out", tmp_path / "out", "--sam2", "random:tiny",
                     "--points-per-side", "4", "--batch-size", "4")
    assert result.exit_code == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no image was labelled (3 error images); the labels and error rows are in {tmp_path / 'out'}")
    assert "OUT holds 0 ok + 3 error images" in result.stdout
    assert "       3  read failed: no such file" in result.stdout
    assert f"e.g. {tmp_path / 't' / first}: read failed: no such file" in result.stdout
    assert f"file_name entries are relative to {tmp_path / 't'}" in result.stdout
    errors = load_json(tmp_path / "out" / "run.json")["errors"]
    assert [(e["kind"], e["count"]) for e in errors] == [("read failed: no such file", 3)]


def test_an_error_share_above_the_limit_exits_1(tmp_path, ray_session, bank_path, run_cli):
    images = make_targets(tmp_path / "t", 4)  # 4 images and 3 broken files: 43% errors
    args = ["run", "--bank", bank_path, "--images", images, "--out", tmp_path / "out", "--sam2", "random:tiny",
            "--points-per-side", "4", "--batch-size", "4"]
    result = run_cli(*args)
    assert result.exit_code == 1 and "42.9% of the images are errors, more than --max-error-rate 0.05" in result.stderr
    assert "error images: 3 (42.9%), most common reasons:" in result.stdout
    for reason in ("decode failed: empty file", "decode failed: not an image file"):
        assert f"       1  {reason}" in result.stdout
    allowed = run_cli(*args, "--max-error-rate", "0.5")  # resumes: nothing to do, the same OUT judged again
    assert allowed.exit_code == 0 and "0 labelled now, 7 already done" in allowed.stdout


def test_per_class_thresholds_and_a_class_subset_in_run(tmp_path, ray_session, bank_path):
    """The filtered run holds exactly the baseline's detections that the filter keeps."""
    images = make_targets(tmp_path / "t", 6)
    run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(tmp_path / "all"), **TINY_RUN))
    baseline = {r["uri"]: r["detections"] for r in read_rows(tmp_path / "all")}
    names = {c["id"]: c["name"] for c in load_json(tmp_path / "all" / "run.json")["categories"]}
    scores = sorted(d["score"] for detections in baseline.values() for d in detections)
    middle = round(scores[len(scores) // 2], 4)
    first, second = list(names)[:2]
    min_score = f"{middle},{names[first]}=0"
    run_labeling(RunConfig(bank=bank_path, images=str(images), out=str(tmp_path / "some"), min_score=min_score,
                           classes=f"{names[first]},{names[second]}", **TINY_RUN))
    filtered = {r["uri"]: r["detections"] for r in read_rows(tmp_path / "some")}

    def kept(d):
        return d["category_id"] == first or (d["category_id"] == second and d["score"] >= middle)

    assert filtered == {uri: [d for d in detections if kept(d)] for uri, detections in baseline.items()}
    assert sum(map(len, filtered.values())) > 0
    assert {d["category"] for detections in filtered.values() for d in detections} <= {names[first], names[second]}
    settings = load_json(tmp_path / "some" / "_state" / "settings.json")
    assert settings["settings"]["label_filter"] == {"default": middle, "classes": {names[first]: 0.0},
                                                    "only": [names[c] for c in sorted((first, second))]}


def test_damaged_run_state_ends_in_one_line_naming_the_way_out_or_is_repaired(tmp_path, ray_session, bank_path,
                                                                               run_cli):
    """Issue 26, items 6 and 8: a Latin-1 file name is one error row (the listing crashed on it); a corrupt
    listing pointer, a truncated id set or part, a lowered image count stop a rerun in one line naming the
    file and --relist, and --relist then recovers every id from the labels (nothing is labelled again); a
    deleted or truncated COCO twin is written anew by the rerun; a damaged run.json is named by export."""
    images = generate_dataset(tmp_path / "t", 4, seed=21, image_format="jpg", subfolders=False).parent / "images"
    latin = os.fsencode(str(images)) + b"/caf\xe9.jpg"
    Path(os.fsdecode(latin)).write_bytes(next(images.iterdir()).read_bytes())
    out = images / "labels-out"  # OUT inside the source folder: never listed as images
    args = ["run", "--bank", bank_path, "--images", images, "--out", out, "--sam2", "random:tiny",
            "--points-per-side", "4", "--batch-size", "4", "--rows-per-shard", "2", "--max-error-rate", "0.5"]
    first = run_cli(*args)
    assert first.exit_code == 0, first.stderr[-2000:]
    rows = {r["uri"]: r for r in read_rows(out)}
    assert len(rows) == 5 and not any("labels-out" in uri for uri in rows)
    escaped = rows[f"{images}/caf\\xe9.jpg"]
    assert escaped["status"] == "error" and "file name is not valid UTF-8" in escaped["error"]
    ids = {uri: row["image_id"] for uri, row in rows.items()}
    (out / "stray.jpg").write_bytes(next(images.glob("*.jpg")).read_bytes())  # what a relist must not list
    state = out / "_state"
    listing_json = state / "listing.json"
    pointer = listing_json.read_text()
    version = json.loads(pointer)["version"]

    def refused_then_recovered(damage: str, file: Path) -> None:
        refused = run_cli(*args)
        assert refused.exit_code == 2, (damage, refused.stderr[-2000:])
        line = refused.stderr.strip().splitlines()[-1]
        assert str(file) in line and "rerun with --relist" in line and "Traceback" not in refused.stderr, line
        recovered = run_cli(*args, "--relist")
        assert recovered.exit_code == 0, recovered.stderr[-2000:]
        assert "0 labelled now, 5 already done" in recovered.stdout, damage
        assert stored_listing(out) == ids  # every image kept the id its labels carry

    listing_json.write_text("{ not json")
    refused_then_recovered("corrupt pointer", listing_json)
    version = json.loads(listing_json.read_text())["version"]
    ids_npy = state / "listing" / version / "ids.npy"
    ids_npy.write_bytes(ids_npy.read_bytes()[:20])
    refused_then_recovered("truncated id set", ids_npy)
    version = json.loads(listing_json.read_text())["version"]
    part = state / "listing" / version / "part-000000.parquet"
    part.write_bytes(part.read_bytes()[:30])
    refused_then_recovered("truncated part", part)
    lowered = json.loads(listing_json.read_text())
    listing_json.write_text(json.dumps(dict(lowered, images=2)))  # "-3 images were still unlabelled" before
    refused_then_recovered("lowered count", listing_json)

    twins = sorted((out / "coco").iterdir())
    twins[0].unlink()
    twins[1].write_bytes(twins[1].read_bytes()[:40])
    repaired = run_cli(*args)
    assert repaired.exit_code == 0, repaired.stderr[-2000:]
    assert_coco_shards_match_parquet(out)
    (out / "coco.json").unlink()
    assert run_cli("eval", "--pred", out, "--gt", tmp_path / "t" / "annotations.json").exit_code == 0

    (out / "run.json").write_text("garbage")
    damaged = run_cli("export", "--pred", out, "--format", "coco", "--out", tmp_path / "export")
    assert damaged.exit_code == 2 and "run.json: not JSON; rerun the same `labeler run` command" in damaged.stderr
    (out / "run.json").write_text(json.dumps({"out_id": "x"}))
    for command in (("export", "--format", "coco"), ("visualize",), ("review",)):
        without = run_cli(command[0], "--pred", out, *command[1:], "--out", tmp_path / f"o-{command[0]}")
        assert without.exit_code == 2 and "no 'categories' list" in without.stderr, without.stderr
    assert run_cli(*args).exit_code == 0  # the rerun writes run.json anew
    assert run_cli("export", "--pred", out, "--format", "coco", "--out", tmp_path / "export").exit_code == 0


def test_a_coco_source_keeps_its_ids_and_an_id_pointed_at_another_file_is_a_new_image_on_relist(
        tmp_path, ray_session, bank_path):
    """A COCO source's rows carry the file's own ids. Issue 26, items 5 and 6: after --relist, an id whose
    file_name changed is labelled from the new file and its old row goes to _state/removed (it kept the old
    labels, "0 labelled now"); a file_name holding a lone surrogate is one error row, not a crashed listing."""
    gt = generate_dataset(tmp_path / "t", 4, seed=23, image_format="jpg", subfolders=False, first_image_id=500)
    document = load_json(gt)
    document["images"].append({"id": 77, "file_name": "bad-\ud800.jpg", "width": 10, "height": 10})
    gt.write_text(json.dumps(document))
    out = tmp_path / "out"
    config = dict(bank=bank_path, images=str(gt), image_root=str(gt.parent / "images"), out=str(out),
                  max_error_rate=0.5, **TINY_RUN)
    first = run_labeling(RunConfig(**config))
    assert (first.counts.images_ok, first.counts.images_error) == (4, 1)
    rows = {r["image_id"]: r for r in read_rows(out)}
    assert sorted(rows) == [77, 500, 501, 502, 503]
    assert "not valid Unicode" in rows[77]["error"] and rows[77]["uri"].endswith("bad-\\ud800.jpg")

    moved = document["images"][0]
    old_uri = rows[moved["id"]]["uri"]
    other = gt.parent / "images" / "another.jpg"
    other.write_bytes((gt.parent / "images" / document["images"][1]["file_name"]).read_bytes())
    moved["file_name"] = "another.jpg"
    gt.write_text(json.dumps(document))
    relisted = run_labeling(RunConfig(**config, relist=True))
    assert relisted.images_processed == 1 and relisted.counts.images_ok == 4
    now = {r["image_id"]: r for r in read_rows(out)}
    assert now[moved["id"]]["uri"] == str(other) and len(now) == 5
    removed = [r for shard in list_shards(str(out), str(out / "_state" / "removed"))
               for r in pq.read_table(shard).to_pylist()]
    assert [(r["image_id"], r["uri"]) for r in removed] == [(moved["id"], old_uri)]
    assert_coco_shards_match_parquet(out)
    again = run_labeling(RunConfig(**config, relist=True))
    assert again.images_processed == 0 and len(read_rows(out)) == 5
