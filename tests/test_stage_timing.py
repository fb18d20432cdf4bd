"""Stage timing: the profiler's split of each stage into torch operators and host work."""

import time

import pytest
import torch
from torch.profiler import record_function

from labeler.bench.stage_timing import StageClock, host_split


def test_host_split_separates_torch_operators_from_the_rest():
    clock = StageClock(torch.device("cpu"))

    def work():
        with clock.stage("mixed"):
            x = torch.ones(4)  # aten::ones
            y = x + 1  # aten::add
            time.sleep(0.05)
            torch.mm(torch.rand(300, 300), torch.rand(300, 300))  # rand, rand, mm
            with record_function("a library's own range"):
                torch.zeros(2)  # counted through the range: aten::zeros
        with clock.stage("torch_only"):
            y.sum()

    splits = host_split(work)
    assert splits["mixed"].operators == 6 and splits["torch_only"].operators == 1
    assert splits["mixed"].host_ms >= 50 and splits["mixed"].torch_ms > 0
    assert splits["mixed"].wall_ms == pytest.approx(splits["mixed"].host_ms + splits["mixed"].torch_ms)
    assert splits["torch_only"].host_ms < 5
    assert set(clock.seconds) == {"mixed", "torch_only"} and clock.seconds["mixed"] >= 0.05
