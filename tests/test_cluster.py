"""The cluster path: cluster.yaml against Ray's schema, the jobs/ entry points, and a
multi-node run on this machine that loses a worker node mid-run."""

import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from labeler.io.shards import list_shards
from labeler.io.sources import list_source
from labeler.run import RunConfig
from labeler.synthetic import generate_dataset

from .conftest import BackgroundRun

REPO = Path(__file__).resolve().parents[1]
STORE = 300 * 1024**2  # bytes of object store per node


def _validated(config):
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    validate_config(prepare_config(config))


def test_cluster_yaml_validates_against_rays_schema():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validated(config)
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g6e")
    config["available_node_types"]["gpu_worker"]["min_worker"] = 1  # a typo Ray's schema must catch
    with pytest.raises(jsonschema.ValidationError):
        _validated(config)


def test_jobs_entry_points_run_locally(tmp_path):
    refs = generate_dataset(tmp_path / "refs", 4, seed=1)
    targets = generate_dataset(tmp_path / "targets", 3, seed=2)
    bank = tmp_path / "bank.safetensors"
    built = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "build_bank.py"), "--refs", str(refs), "--images",
         str(refs.parent / "images"), "--out", str(bank), "--dinov2", "random:tiny", "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    ran = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "run.py"), "--bank", str(bank), "--images", str(targets.parent / "images"),
         "--out", str(tmp_path / "out"), "--sam2", "random:tiny", "--points-per-side", "4"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "3 images listed" in ran.stdout and (tmp_path / "out" / "coco.json").exists()


@pytest.fixture
def two_node_cluster():
    """A head and a worker node on this machine with room for the four model actors
    and the tasks around them, small object stores (300 MB)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "object_store_memory": STORE})
    cluster.add_node(num_cpus=3, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _model_actors_alive() -> int:
    from ray._private.state import actors  # the GCS actor table; the dashboard is not running

    return sum(a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"] for a in actors().values())


def _wait_until_busy(node, job: BackgroundRun, timeout: float = 300) -> None:
    """Block until a task holds a CPU on ``node``; fail if the run ended first."""
    from ray._private.state import available_resources_per_node, total_resources_per_node

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.thread.is_alive():
        free = available_resources_per_node().get(node.node_id, {}).get("CPU")
        if free is not None and free < total_resources_per_node()[node.node_id]["CPU"]:
            return
        time.sleep(0.05)
    pytest.fail("no task ran on the added node before the run ended: give it more work")


def test_run_survives_losing_a_worker_node(tmp_path, two_node_cluster):
    """A node joins once the model actors are placed, takes read, decode and write
    tasks, and is lost while one of them runs: the job finishes, each image once."""
    cluster = two_node_cluster
    refs = generate_dataset(tmp_path / "refs", 4, seed=1)
    from labeler.build_bank import build_bank

    bank = tmp_path / "bank.safetensors"
    build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu").save(str(bank))
    images = generate_dataset(tmp_path / "t", 80, seed=9, image_format="jpg").parent / "images"
    out = tmp_path / "out"
    config = RunConfig(bank=str(bank), images=str(images), out=str(out), sam2="random:tiny", points_per_side=16,
                       batch_size=2, rows_per_shard=4, sam2_actors=2, dinov2_actors=2)
    job = BackgroundRun(config)
    job.wait_for_first_shard()
    assert _model_actors_alive() == 4  # a fixed pool: none of them will be placed on the node added next
    victim = cluster.add_node(num_cpus=2, object_store_memory=STORE)
    cluster.wait_for_nodes()
    _wait_until_busy(victim, job)
    cluster.remove_node(victim, allow_graceful=False)
    summary = job.finish()
    ids = [i for shard in list_shards(str(out)) for i in pq.read_table(shard).column("image_id").to_pylist()]
    assert sorted(ids) == sorted(list_source(str(images)).table.column("image_id").to_pylist())
    assert len(ids) == len(set(ids)) == 80
    assert summary.counts.images_ok == 80
