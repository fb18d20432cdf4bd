"""The cluster path: cluster.yaml against Ray's schema, the jobs/ entry points, and a
multi-node run on this machine that loses a worker node mid-run."""

import subprocess
import sys
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
def three_node_cluster():
    """A head and two worker nodes on this machine, small object stores (300 MB)."""
    import ray
    from ray.cluster_utils import Cluster

    store = 300 * 1024**2
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": store})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=store) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _worker_with_fewest_model_actors(workers):
    """A worker node other than the driver's, preferring one without model actors.

    Losing a node that hosts a model actor can leave Ray Data waiting for
    that actor's lost outputs (seen once in several runs, docs/RELIABILITY.md);
    this test covers losing a node that runs read, decode and write tasks.
    """
    import ray
    from ray._private.state import actors  # the GCS actor table; the dashboard is not running

    driver_node = ray.get_runtime_context().get_node_id()
    alive = [a for a in actors().values() if a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"]]
    candidates = [w for w in workers if w.node_id != driver_node]
    return min(candidates, key=lambda w: sum(a["Address"]["NodeID"] == w.node_id for a in alive))


def test_run_survives_losing_a_worker_node(tmp_path, three_node_cluster):
    cluster, workers = three_node_cluster
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
    cluster.remove_node(_worker_with_fewest_model_actors(workers), allow_graceful=False)
    summary = job.finish()
    ids = [i for shard in list_shards(str(out)) for i in pq.read_table(shard).column("image_id").to_pylist()]
    assert sorted(ids) == sorted(list_source(str(images)).table.column("image_id").to_pylist())
    assert len(ids) == len(set(ids)) == 80
    assert summary.counts.images_ok == 80
