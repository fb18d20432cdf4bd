"""Counted work of hand-made computations: exact FLOPs and bytes written."""

import torch

from labeler.models.work_count import Work, count_work


def test_flops_and_bytes_of_new_outputs_and_in_place_writes_but_not_views():
    def run():
        x = torch.ones(10, 20)  # 800 bytes
        y = x @ torch.ones(20, 30)  # 2400 + 1200 bytes, 2 * 10 * 20 * 30 FLOPs
        y.t()  # a view: nothing written
        y[:, :5]  # a view
        y.add_(1)  # 1200 bytes written in place
        y.to(torch.bfloat16)  # 600 bytes

    assert count_work(run) == Work(flops=12000.0, bytes_written=6200.0)


def test_compiled_modules_are_counted_as_their_eager_code():
    linear = torch.nn.Linear(8, 4, bias=False)
    eager = count_work(lambda: linear(torch.zeros(3, 8)))
    linear.compile(dynamic=False)
    assert count_work(lambda: linear(torch.zeros(3, 8))) == eager == Work(flops=192.0, bytes_written=96.0 + 48.0)


def test_scaling():
    assert Work(10.0, 4.0).scaled(2.5) == Work(25.0, 10.0)
