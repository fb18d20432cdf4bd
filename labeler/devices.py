"""Resolution of ``--device`` values."""

from __future__ import annotations

import re

import numpy as np
import torch

from labeler.errors import LabelerError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a :class:`torch.device`.

    ``auto`` picks the first CUDA device when one is present, else the CPU.
    Asking for CUDA where there is none, or for a device index that does not
    exist, is a :class:`LabelerError`.
    """
    spec = spec.strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise LabelerError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LabelerError(f"--device {spec}: no CUDA device is available on this machine")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise LabelerError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are present"
        )
    return device


def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array as a tensor on ``device``; on CUDA through pinned memory and a
    non-blocking copy, so the transfer overlaps the work queued before it."""
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"]))
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
