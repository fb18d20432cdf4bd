"""Does the run fit the cluster? Checked before any image is read.

A run asks for ``--sam2-actors`` + ``--dinov2-actors`` model actors (a rescore
for ``--actors``), each holding one CPU and ``--gpus-per-actor`` GPUs on one node, and CPUs for the
read, decode and write tasks besides. Ray Data would otherwise wait forever
for actors the cluster cannot place, or for a CPU to decode on once the
actors took them all. The cluster is what Ray reports now or, where an
autoscaler is configured, what it can grow to (its node groups' largest
sizes), so that GPU workers that start at zero count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from labeler.errors import LabelerError
from labeler.run.progress import STAGE_NAMES

log = logging.getLogger(__name__)

#: Logical CPUs each model actor holds (its host work: payloads, RLE, transfers).
ACTOR_CPUS = 1.0
#: Logical CPUs per read + decode task and per write task (both wait on storage much of the time).
DECODE_CPUS = 0.5
WRITE_CPUS = 0.5
#: CPUs that must stay free of actors: one decode and one write task at a time.
TASK_CPUS = DECODE_CPUS + WRITE_CPUS


@dataclass(frozen=True)
class Cluster:
    """Resources per node, and whether they are what an autoscaler can reach rather than what is up now."""

    nodes: list[dict[str, float]]
    autoscaling: bool = False

    @property
    def cpus(self) -> float:
        return sum(node.get("CPU", 0.0) for node in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(node.get("GPU", 0.0) for node in self.nodes)

    def describe(self) -> str:
        size = f"{self.cpus:g} CPUs and {self.gpus:g} GPUs on {len(self.nodes)} nodes"
        return f"can grow to {size}" if self.autoscaling else f"has {size}"


@dataclass(frozen=True)
class Fit:
    """The actors a run gets per model stage, and whether they run on GPUs."""

    actors: dict[str, int]
    use_gpu: bool


def actor_slots(cluster: Cluster, gpus_per_actor: float) -> int:
    """How many model actors fit, node by node (an actor's CPU and GPUs are on one node)."""
    slots = 0
    for node in cluster.nodes:
        by_cpu = math.floor(node.get("CPU", 0.0) / ACTOR_CPUS + 1e-9)
        by_gpu = math.floor(node.get("GPU", 0.0) / gpus_per_actor + 1e-9) if gpus_per_actor > 0 else by_cpu
        slots += min(by_cpu, by_gpu)
    return slots


def fit_actors(cluster: Cluster, asked: dict[str, int], gpus_per_actor: float) -> Fit:
    """The actor counts (per model stage, by its name in messages) that fit ``cluster``: as asked, or fewer
    in the same proportion (with a warning), keeping CPUs for the tasks.

    Raises:
        LabelerError: not even one actor per stage and one CPU for the tasks fit.
    """
    use_gpu = cluster.gpus > 0 and gpus_per_actor > 0
    total = sum(asked.values())
    by_cpu = math.floor((cluster.cpus - TASK_CPUS) / ACTOR_CPUS + 1e-9)
    fits = min(total, actor_slots(cluster, gpus_per_actor if use_gpu else 0.0), by_cpu)
    if fits < len(asked):
        per_actor = f"{ACTOR_CPUS:g} CPU" + (f" and {gpus_per_actor:g} GPU" if use_gpu else "")
        raise LabelerError(
            f"the cluster {cluster.describe()}; a run needs at least {len(asked)} model "
            f"actor{'s' if len(asked) > 1 else ''} ({per_actor} each, on one node) and {TASK_CPUS:g} CPU more for reading and writing: start Ray with more CPUs (ray start "
            "--num-cpus), add nodes" + (", or lower --gpus-per-actor" if use_gpu else "")
        )
    if fits == total:
        return Fit(dict(asked), use_gpu)
    given, left = {}, fits
    for position, (stage, count) in enumerate(asked.items()):
        still = len(asked) - position - 1  # stages after this one, each needing an actor
        given[stage] = left - still if not still else min(max(1, round(fits * count / total)), left - still)
        left -= given[stage]
    log.warning("the cluster %s: running %s actors instead of the %s asked for", cluster.describe(),
                " and ".join(f"{n} {STAGE_NAMES.get(s, s)}" for s, n in given.items()),
                " and ".join(str(n) for n in asked.values()))
    return Fit(given, use_gpu)


def current_cluster() -> Cluster:
    """The connected Ray cluster: its autoscaler's node groups at their largest, else its live nodes."""
    import ray
    from ray._private.state import state

    groups = None
    try:  # what Ray Data itself reads to size its operators on an autoscaling cluster
        config = state.get_cluster_config()
        groups = config.node_group_configs if config is not None else None
    except Exception as error:  # noqa: BLE001 - older clusters, no autoscaler: use the live nodes
        log.debug("no autoscaler configuration: %s", error)
    if groups:
        nodes = []
        for group in groups:
            count = group.max_count if group.max_count >= 0 else 1024
            nodes += [dict(group.resources)] * count
        return Cluster([{k: float(v) for k, v in node.items()} for node in nodes], autoscaling=True)
    return Cluster([dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")])


#: Seconds to wait, after a pass lost a worker, for Ray to tell live nodes from dead ones.
NODE_SETTLE_TIMEOUT = 60.0
#: Seconds a live node has to answer a probe.
NODE_PROBE_TIMEOUT = 5.0


def settle_nodes(timeout: float = NODE_SETTLE_TIMEOUT) -> bool:
    """Wait until every node Ray lists as alive answers a probe task, at most ``timeout`` seconds.

    A node that went away is listed as alive until Ray's health checks give
    up on it (tens of seconds); a pass planned in that window can place its
    actors there and lose them before they start. Each round pins a no-CPU
    task to every listed node; a node that does not answer in
    :data:`NODE_PROBE_TIMEOUT` is waited on until Ray declares it dead.

    Returns:
        True when every listed node answered; False when ``timeout`` ran out
        first (the next pass then goes ahead on what Ray lists).
    """
    import time

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def probe() -> bool:
        return True

    deadline = time.monotonic() + timeout
    while True:
        nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
        if not nodes:
            return True
        probes = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                  for node in nodes]
        wait = max(0.0, min(NODE_PROBE_TIMEOUT, deadline - time.monotonic()))
        ready, pending = ray.wait(probes, num_returns=len(probes), timeout=wait)
        for ref in pending:
            ray.cancel(ref, force=True)
        if not pending:
            return True
        if time.monotonic() >= deadline:
            log.warning("%d node(s) listed as alive did not answer within %.0f s", len(pending), timeout)
            return False
        log.info("waiting for Ray to settle %d unresponsive node(s)", len(pending))
        time.sleep(1.0)
