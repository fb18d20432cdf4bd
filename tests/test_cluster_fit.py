"""Preflight: a run that cannot fit the cluster is refused or sized down, never left waiting."""

import time

import pytest

from labeler.errors import LabelerError
from labeler.run.cluster import Cluster, Fit, actor_slots, fit_actors
from labeler.run.watchdog import stalled_stage


def test_a_run_that_fits_is_unchanged():
    cluster = Cluster([{"CPU": 8.0, "GPU": 1.0}] * 2)
    assert fit_actors(cluster, {"sam2": 2, "dinov2": 2}, 0.5) == Fit({"sam2": 2, "dinov2": 2}, use_gpu=True)


def test_actors_are_placed_node_by_node():
    # 2 GPUs in all, but 0.75 GPU per actor fits only one actor on each 1-GPU node.
    cluster = Cluster([{"CPU": 8.0, "GPU": 1.0}] * 2)
    assert actor_slots(cluster, 0.75) == 2 and actor_slots(cluster, 0.5) == 4
    assert actor_slots(Cluster([{"CPU": 1.0, "GPU": 8.0}]), 0.5) == 1  # one CPU per actor


def test_too_many_actors_are_sized_down_in_proportion(caplog):
    cluster = Cluster([{"CPU": 8.0, "GPU": 1.0}] * 2)  # 4 slots at 0.5 GPU
    assert fit_actors(cluster, {"sam2": 6, "dinov2": 2}, 0.5) == Fit({"sam2": 3, "dinov2": 1}, use_gpu=True)
    assert "running 3 SAM2 and 1 DINOv2 actors instead of the 6 and 2 asked for" in caplog.text


def test_cpus_stay_for_reading_and_writing():
    # 3 CPUs, no GPU: two actors would leave 1 CPU for decode and write tasks; three would leave none.
    assert fit_actors(Cluster([{"CPU": 3.0}]), {"sam2": 2, "dinov2": 2}, 1.0) == Fit({"sam2": 1, "dinov2": 1}, use_gpu=False)


@pytest.mark.parametrize("nodes, message", [
    ([{"CPU": 2.0}], r"has 2 CPUs and 0 GPUs on 1 nodes; a run needs at least 2 model actors \(1 CPU each"),
    ([{"CPU": 16.0, "GPU": 1.0}], r"1 CPU and 1 GPU each, on one node.*or lower --gpus-per-actor"),
])
def test_a_cluster_too_small_for_one_actor_per_model_is_refused(nodes, message):
    with pytest.raises(LabelerError, match=message):
        fit_actors(Cluster(nodes), {"sam2": 1, "dinov2": 1}, 1.0)


def test_an_autoscaling_cluster_counts_what_it_can_grow_to():
    assert "can grow to 40 CPUs and 4 GPUs" in Cluster([{"CPU": 4.0}] + [{"CPU": 9.0, "GPU": 1.0}] * 4,
                                                       autoscaling=True).describe()


def test_a_two_cpu_ray_is_refused_within_seconds(tmp_path):
    """The situation of `ray start --head --num-cpus 2`: it used to wait forever at 'Total Progress: 0/?'."""
    import ray

    from labeler.bank.build import build_bank
    from labeler.run.config import RunConfig
    from labeler.run.driver import run_labeling
    from labeler.synthetic import generate_dataset

    refs = generate_dataset(tmp_path / "refs", 2, seed=1)
    build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", device="cpu").save(str(tmp_path / "b.st"))
    images = generate_dataset(tmp_path / "t", 2, seed=2).parent / "images"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.monotonic()
        with pytest.raises(LabelerError, match="has 2 CPUs and 0 GPUs on 1 nodes; a run needs at least 2 model actors"):
            run_labeling(RunConfig(bank=str(tmp_path / "b.st"), images=str(images), out=str(tmp_path / "out"),
                                   sam2="random:tiny", points_per_side=4))
        assert time.monotonic() - started < 30
    finally:
        ray.shutdown()


@pytest.mark.parametrize("rows, expected", [
    ({"read": 0, "sam2": 0, "dinov2": 0, "write": 0}, "read"),  # nothing read: no CPU, or a hung store
    ({"read": 40, "sam2": 16, "dinov2": 16, "write": 16}, "sam2"),  # SAM2 holds the work
    ({"read": 40, "sam2": 40, "dinov2": 8, "write": 8}, "dinov2"),
    ({"read": 40, "sam2": 40, "dinov2": 40, "write": 38}, "read"),  # 2 rows waiting to fill a shard: not the writer
    ({"read": 40, "sam2": 40, "dinov2": 40, "write": 20}, "write"),
    ({"read": 100, "sam2": 100, "dinov2": 100, "write": 98}, "write"),  # all read: the last shard never came
])
def test_the_stalled_stage_is_the_one_holding_the_work(rows, expected):
    assert stalled_stage(rows, total=100, rows_per_shard=4) == expected


def test_an_autoscaler_configuration_is_read_as_the_nodes_it_can_start(monkeypatch):
    """GPU workers that start at zero (cluster.yaml) still make a GPU run: the autoscaler can start them."""
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    from labeler.run.cluster import current_cluster

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 4}, min_count=1, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="gpu_worker", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=3),
    ])
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    cluster = current_cluster()
    assert cluster.autoscaling and (cluster.cpus, cluster.gpus, len(cluster.nodes)) == (28.0, 3.0, 4)
    assert fit_actors(cluster, {"sam2": 4, "dinov2": 4}, 0.5) == Fit({"sam2": 3, "dinov2": 3}, use_gpu=True)


def test_one_stage_runs_fit_the_same_way(caplog):
    """labeler rescore has one model stage: at least one actor, sized down to the slots."""
    assert fit_actors(Cluster([{"CPU": 4.0}]), {"rescore": 8}, 0.0) == Fit({"rescore": 3}, use_gpu=False)
    assert "running 3 rescoring actors instead of the 8 asked for" in caplog.text
    with pytest.raises(LabelerError, match="needs at least 1 model actor .1 CPU each"):
        fit_actors(Cluster([{"CPU": 1.0}]), {"rescore": 1}, 0.0)


def test_the_stalled_stage_of_a_rescore():
    stages = ("read", "rescore", "write")
    assert stalled_stage({"read": 10, "rescore": 4, "write": 0}, 10, 100, stages) == "rescore"
    assert stalled_stage({"read": 3, "rescore": 3, "write": 0}, 10, 100, stages) == "read"
