"""Everything on s3://, against a real S3 endpoint on 127.0.0.1 (moto's server)."""

import json
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from s3fs import S3FileSystem

from labeler.bank.build import build_bank
from labeler.bank.file import load_bank
from labeler.io import storage
from labeler.outdir.shards import list_shards
from labeler.run.config import RunConfig
from labeler.run.driver import run_labeling
from labeler.synthetic import generate_dataset

from .conftest import assert_coco_shards_match_parquet, stored_listing
from .s3_endpoint import S3Endpoint

SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint, the standard AWS variables pointing at it, and a Ray that inherits them."""
    import ray

    endpoint = S3Endpoint().start()
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ENDPOINT_URL": endpoint.proxy.endpoint, "AWS_ACCESS_KEY_ID": "labeler-test",
                       "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_MAX_ATTEMPTS": "2"}.items():
        patch.setenv(key, value)
    fsspec.config.conf.pop("s3", None)
    S3FileSystem.clear_instance_cache()  # a filesystem cached by an earlier test may point elsewhere
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield endpoint
    ray.shutdown()
    patch.undo()
    endpoint.stop()
    S3FileSystem.clear_instance_cache()


def upload(local: Path, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.put(str(local), path, recursive=True)


def bucket(name: str) -> str:
    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


def test_build_bank_and_run_with_everything_on_s3(tmp_path, s3, run_cli):
    root = bucket("labeler-e2e")
    refs = generate_dataset(tmp_path / "refs", 4, seed=1, segmentation="mixed")
    targets = generate_dataset(tmp_path / "targets", 6, seed=2, image_format="jpg")
    upload(refs.parent, f"{root}/refs")
    upload(targets.parent / "images", f"{root}/targets")
    fs, _ = storage.filesystem(root)
    fs.pipe(f"{root.removeprefix('s3://')}/targets/corrupt.jpg", b"\xff\xd8 not really")

    built = run_cli("build-bank", "--refs", f"{root}/refs/annotations.json", "--images", f"{root}/refs/images",
                    "--out", f"{root}/bank.safetensors", "--dinov2", "random:tiny", "--sam2", "random:tiny",
                    "--device", "cpu")
    assert built.exit_code == 0, built.stderr
    bank = load_bank(f"{root}/bank.safetensors")
    local = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", sam2="random:tiny", device="cpu")
    assert bank.content_hash == local.content_hash  # same bank whether read from S3 or disk

    result = run_cli("run", "--bank", f"{root}/bank.safetensors", "--images", f"{root}/targets/", "--out",
                     f"{root}/out", "--sam2", "random:tiny", "--points-per-side", "4", "--batch-size", "4",
                     "--max-error-rate", "0.2")  # 1 broken image of 7
    assert result.exit_code == 0, result.stderr[-3000:]
    rows = [r for shard in list_shards(f"{root}/out") for r in pq.read_table(fs.open(shard)).to_pylist()]
    assert len(rows) == 7 and len({r["image_id"] for r in rows}) == 7
    assert all(r["uri"].startswith(f"{root}/targets/") for r in rows)
    assert all(r["file_name"] == r["uri"].removeprefix(f"{root}/targets/") for r in rows)
    assert [r["status"] for r in rows].count("error") == 1
    manifest = fs.cat(f"{root}/out/run.json").decode()
    assert json.loads(manifest)["counts"]["images_ok"] == 6
    assert SECRET not in manifest and SECRET not in result.stdout + result.stderr
    coco_local = tmp_path / "coco.json"
    coco_local.write_bytes(fs.cat(f"{root}/out/coco.json"))
    assert len(COCO(str(coco_local)).getImgIds()) == 6
    assert not [p for p in fs.ls(f"{root}/out/labels") if ".tmp-" in p]
    fs.get(f"{root}/out/", str(tmp_path / "out-copy"), recursive=True)
    assert assert_coco_shards_match_parquet(tmp_path / "out-copy") == json.loads(manifest)["counts"]["detections"]
    assert len(stored_listing(tmp_path / "out-copy")) == 7  # the listing is stored on S3 too


def test_a_prefix_is_listed_per_sub_prefix_in_pages(s3, monkeypatch):
    from labeler.io import prefix_listing

    root = bucket("labeler-listing")
    fs, _ = storage.filesystem(root)
    keys = ([f"top-{n}.jpg" for n in range(3)] + [f"a/{n:04d}.png" for n in range(1203)]  # a/: two pages
            + [f"b/c/{n}.jpg" for n in range(5)] + ["b/notes.txt", "d/e/f/deep.jpeg"])
    fs.pipe({f"labeler-listing/{key}": b"x" for key in keys})
    monkeypatch.setattr(prefix_listing, "BATCH_NAMES", 500)
    batches = list(prefix_listing.iter_remote(root, lambda name: not name.endswith(".txt")))
    assert sorted(uri for batch in batches for uri in batch) == sorted(
        f"{root}/{key}" for key in keys if not key.endswith(".txt"))
    assert max(len(batch) for batch in batches) <= 500 and len(batches) >= 4


def test_throttled_object_is_retried_and_forbidden_one_is_an_error_row(tmp_path, s3, bank_on_s3):
    root = bucket("labeler-faults")
    targets = generate_dataset(tmp_path / "targets", 3, seed=3, subfolders=False, image_format="jpg")
    upload(targets.parent / "images", f"{root}/imgs")
    s3.proxy.fail("/labeler-faults/imgs/img_00001.jpg", 503, times=4)  # outlasts botocore's 2 attempts
    s3.proxy.fail("/labeler-faults/imgs/img_00002.jpg", 403, times=None)
    summary = run_labeling(RunConfig(bank=bank_on_s3, images=f"{root}/imgs", out=f"{root}/out", sam2="random:tiny",
                                     points_per_side=4, batch_size=4))
    fs, _ = storage.filesystem(root)
    rows = {Path(r["uri"]).name: r for shard in list_shards(f"{root}/out") for r in pq.read_table(fs.open(shard)).to_pylist()}
    assert rows["img_00001.jpg"]["status"] == "ok"
    assert s3.proxy.hits["/labeler-faults/imgs/img_00001.jpg"] > 4  # failed 4 times, then served
    assert rows["img_00002.jpg"]["status"] == "error"
    assert rows["img_00002.jpg"]["error"] == "read failed: permission denied"
    assert rows["img_00003.jpg"]["status"] == "ok"
    assert summary.counts.images_ok == 2 and summary.counts.images_error == 1


@pytest.fixture(scope="module")
def bank_on_s3(tmp_path_factory, s3):
    root = bucket("labeler-banks")
    refs = generate_dataset(tmp_path_factory.mktemp("refs"), 4, seed=1)
    bank = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu")
    bank.save(f"{root}/bank.safetensors")
    return f"{root}/bank.safetensors"


def test_storage_options_json_reaches_the_workers(tmp_path, s3, bank_on_s3, monkeypatch):
    """With the endpoint given only through --storage-options, the run still works
    (the Ray workers apply the options themselves)."""
    root = bucket("labeler-options")
    targets = generate_dataset(tmp_path / "targets", 2, seed=4, subfolders=False)
    upload(targets.parent / "images", f"{root}/imgs")
    options = {"s3": {"endpoint_url": s3.direct}}
    summary = run_labeling(RunConfig(bank=bank_on_s3, images=f"{root}/imgs", out=f"{root}/out", sam2="random:tiny",
                                     points_per_side=4, storage_options=options))
    assert summary.counts.images_ok == 2
