"""Timing named stages, and splitting their time into torch operators and host work.

:class:`StageClock` times blocks of code as named stages, synchronising the
device at both ends so that each stage is timed alone. Run under
:func:`host_split`, the same stages are profiled, and each one's time is
split into time inside torch operators (the tensor work, which a GPU takes
over, leaving a launch of a few microseconds per operator) and the rest
(Python, numpy, PIL, Arrow: host CPU work whatever the device). On the CPU
the rest also holds the release of large CPU tensors (tens of ms per
400 MB), which a GPU's caching allocator does not pay, so CPU figures are an
upper bound.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

#: Name prefix of the profiler ranges that mark the stages.
STAGE_RANGE = "labeler.stage:"


class StageClock:
    """Wall time per named stage, with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (also a profiler range, see :func:`host_split`)."""
        self._sync()
        started = time.perf_counter()
        with record_function(STAGE_RANGE + name):
            yield
            self._sync()
        self.seconds[name] += time.perf_counter() - started


@dataclass
class HostSplit:
    """One stage's time split by the profiler, summed over the profiled images."""

    wall_ms: float = 0.0
    torch_ms: float = 0.0  # inside torch operators
    operators: int = 0  # top-level torch operators called

    @property
    def host_ms(self) -> float:
        """Time outside torch operators: Python, numpy, PIL, Arrow."""
        return max(0.0, self.wall_ms - self.torch_ms)


def _operator_time(event) -> tuple[float, int]:
    """Microseconds in, and count of, the top-level torch operators under a profiler range."""
    total, count = 0.0, 0
    for child in event.cpu_children:
        if child.is_user_annotation:
            inner, inner_count = _operator_time(child)
            total, count = total + inner, count + inner_count
        else:
            total, count = total + child.cpu_time_total, count + 1
    return total, count


def host_split(run: Callable[[], object]) -> dict[str, HostSplit]:
    """Run ``run`` under the CPU profiler; split each :class:`StageClock` stage it times."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # the profiler's own start/stop chatter
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    splits: dict[str, HostSplit] = defaultdict(HostSplit)
    for event in profiler.events():
        if event.is_user_annotation and event.name.startswith(STAGE_RANGE):
            split = splits[event.name[len(STAGE_RANGE):]]
            inside, count = _operator_time(event)
            split.wall_ms += event.cpu_time_total / 1000.0
            split.torch_ms += inside / 1000.0
            split.operators += count
    return splits


def top_operators(run: Callable[[], object], device: torch.device, count: int) -> list[dict[str, float | str]]:
    """Run ``run`` under the profiler; the ``count`` operators and kernels with the
    most self time on ``device`` (the GPU's time for CUDA, the CPU's otherwise),
    as ``{"name", "ms", "calls"}`` summed over the run."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        run()
        if on_gpu:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    averages = sorted(profiler.key_averages(), key=lambda event: getattr(event, key), reverse=True)
    return [{"name": event.key, "ms": getattr(event, key) / 1000.0, "calls": event.count}
            for event in averages[:count]]
