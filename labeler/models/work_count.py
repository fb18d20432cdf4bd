"""The work of a network call, counted: FLOPs and the bytes its operators write.

FLOPs come from torch's own counter (matmuls, convolutions, attention). Bytes
written are the sizes of every operator's new outputs (views excluded), as
eager PyTorch runs them, one kernel per operator: a fused or compiled
network writes less. Together they give two floors on a GPU's time, one for
its arithmetic peak and one for its memory bandwidth (each byte written is
read back at least once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes written by operators."""

    flops: float = 0.0
    bytes_written: float = 0.0

    def scaled(self, factor: float) -> "Work":
        return Work(self.flops * factor, self.bytes_written * factor)


class _BytesWritten(TorchDispatchMode):
    """Sums the bytes of the outputs of every operator that is not a view (in-place ones count)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.total += sum(leaf.nbytes for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor))
        return out


def count_work(run: Callable[[], object]) -> Work:
    """Count what ``run()`` does; compiled modules run (and are counted) as their eager code."""
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as flops, _BytesWritten() as written:
        run()
    return Work(float(flops.get_total_flops()), float(written.total))
