"""The cluster path: cluster.yaml against Ray's schema, the jobs/ entry points, and a
multi-node run on this machine that loses a worker node mid-run."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from labeler.outdir.shards import list_shards
from labeler.run.config import RunConfig
from labeler.synthetic import generate_dataset

from .conftest import BackgroundRun, stored_listing

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real `ray start --head` with Ray's token authentication, set up as docs/cluster.md says
    (`ray get-auth-token --generate`, RAY_AUTH_MODE=token), with its own HOME so that the token is
    this test's; stopped at the end. Yields the environment that reaches it."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home), RAY_AUTH_MODE="token",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    dashboard = _free_port()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus", "3", "--port", str(_free_port()),
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(_free_port()), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while subprocess.run(["ray", "job", "list"], env=env, capture_output=True).returncode:
        assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not start"
        time.sleep(1)
    yield env
    head.terminate()  # `ray start --block` stops the processes it started ...
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)  # ... and whatever of its session is left goes now


def submit(env: dict, working_dir: Path, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir DIR -- python ENTRYPOINT...`, waiting for the job."""
    return subprocess.run(["ray", "job", "submit", "--working-dir", str(working_dir), "--", "python", *entrypoint],
                          env=env, capture_output=True, text=True, timeout=600)


def test_ray_job_submit_of_both_jobs_with_relative_paths(tmp_path, ray_head):
    """As docs/cluster.md says to: the jobs/ entry points submitted to a real head. Relative inputs that
    were uploaded are used; an output path that would land in Ray's temporary copy of the working dir,
    and an input .gitignore kept from the upload, are refused in one line that says what to pass."""
    work = tmp_path / "work"
    shutil.copytree(REPO / "jobs", work / "jobs")
    refs = generate_dataset(work / "refs", 4, seed=1)
    generate_dataset(work / "targets", 3, seed=2)
    (work / ".gitignore").write_text("*.safetensors\n")
    bank = tmp_path / "bank.safetensors"
    build = ["jobs/build_bank.py", "--refs", "refs/annotations.json", "--images", "refs/images",
             "--dinov2", "random:tiny", "--device", "cpu"]

    refused = submit(ray_head, work, *build, "--out", "bank.safetensors")
    assert refused.returncode != 0
    assert ("error: --out bank.safetensors: a relative path inside a Ray job would be written into the job's "
            "temporary copy of --working-dir") in refused.stdout + refused.stderr
    built = submit(ray_head, work, *build, "--out", str(bank))
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    assert bank.exists() and refs.exists()

    shutil.copy(bank, work / "bank.safetensors")  # there, but .gitignore keeps it from the upload
    run = ["jobs/run.py", "--images", "targets/images", "--sam2", "random:tiny", "--points-per-side", "4"]
    refused = submit(ray_head, work, *run, "--bank", "bank.safetensors", "--out", str(tmp_path / "out"))
    assert refused.returncode != 0
    assert ("error: --bank bank.safetensors: not in the job's working directory (ray job submit uploads "
            "--working-dir without the files .gitignore excludes") in refused.stdout + refused.stderr
    ran = submit(ray_head, work, *run, "--bank", str(bank), "--out", str(tmp_path / "out"))
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    assert "3 images listed" in ran.stdout
    rows = [r for shard in list_shards(str(tmp_path / "out")) for r in pq.read_table(shard).to_pylist()]
    assert sorted(Path(r["uri"]).name for r in rows) == sorted(p.name for p in (work / "targets" / "images").rglob("*.png"))


@pytest.fixture
def cluster_of_workers():
    """A head that runs only the driver (no CPUs) and two worker nodes on this machine, small object stores."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    for _ in range(2):
        cluster.add_node(num_cpus=3, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_settling_waits_until_a_lost_node_is_no_longer_listed(cluster_of_workers):
    """A worker killed without notice stays listed as alive for a while; settle_nodes returns
    only once Ray has declared it dead (its probe never answers), and a live cluster settles at once."""
    import ray

    from labeler.run.cluster import settle_nodes

    assert settle_nodes(timeout=30)
    victim = cluster_of_workers.worker_nodes.copy().pop()
    victim_id = victim.node_id
    cluster_of_workers.remove_node(victim, allow_graceful=False)
    assert settle_nodes(timeout=120)
    listed = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    assert victim_id not in listed and len(listed) == 2  # the head and the other worker


def _node_hosting(cluster, actor_class: str, skip: set):
    """A worker node hosting a live actor of ``actor_class`` not in ``skip``; records the actor in ``skip``."""
    from ray._private.state import actors  # the GCS actor table; the dashboard is not running

    for actor_id, actor in actors().items():
        if actor["State"] == "ALIVE" and actor_class in actor["ActorClassName"] and actor_id not in skip:
            node = next((n for n in cluster.worker_nodes if n.node_id == actor["Address"]["NodeID"]), None)
            if node is not None:
                skip.add(actor_id)
                return node
    return None


def _live_actors() -> set:
    from ray._private.state import actors

    return {actor_id for actor_id, actor in actors().items() if actor["State"] == "ALIVE"}


def test_losing_the_nodes_of_a_sam2_and_a_dinov2_actor_finishes_each_image_once(tmp_path, cluster_of_workers):
    """Spot GPU nodes go away: the node of the first pass's SAM2 actor is lost as soon as the
    actor is up, with images in flight, then that of the next pass's DINOv2 actor, each
    replaced by a new node as an autoscaler would. The first loss abandons the pass within
    seconds and the next pass, sized to the cluster of the moment, labels what was lost;
    whatever the second loss hits, every image ends in exactly one row, in bounded time."""
    cluster = cluster_of_workers
    refs = generate_dataset(tmp_path / "refs", 4, seed=1)
    from labeler.bank.build import build_bank

    bank = tmp_path / "bank.safetensors"
    build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu").save(str(bank))
    images = generate_dataset(tmp_path / "t", 80, seed=9, image_format="jpg", image_size=(160, 128)).parent / "images"
    out = tmp_path / "out"
    config = RunConfig(bank=str(bank), images=str(images), out=str(out), sam2="random:tiny", points_per_side=4,
                       batch_size=2, rows_per_shard=4, sam2_actors=1, dinov2_actors=1, replan_after=5,
                       stall_timeout=300)
    started = time.monotonic()
    job = BackgroundRun(config)
    seen: set = set()
    try:
        deadline = time.monotonic() + 300
        for actor_class in ("Sam2Proposer", "Dinov2Scorer"):
            victim = _node_hosting(cluster, actor_class, seen)
            while victim is None and job.thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)  # the pass is still placing its actors (hit at once: a small run is quick)
                victim = _node_hosting(cluster, actor_class, seen)
            assert victim is not None and job.thread.is_alive(), (
                f"no live {actor_class} on a worker node to lose; the run: {job.outcome!r}")
            seen |= _live_actors()  # the next loss hits an actor of the next pass
            cluster.remove_node(victim, allow_graceful=False)
            cluster.add_node(num_cpus=3, object_store_memory=STORE)
    finally:
        job.thread.join(timeout=600)  # never tear the cluster down under a running pipeline
    summary = job.finish(timeout=1)
    ids = [i for shard in list_shards(str(out)) for i in pq.read_table(shard).column("image_id").to_pylist()]
    assert sorted(ids) == sorted(stored_listing(out).values())
    assert len(ids) == len(set(ids)) == 80 and summary.counts.images_ok == 80
    assert time.monotonic() - started < 600
