"""What every model actor does first in its worker process."""

from __future__ import annotations

import torch

from labeler.devices import resolve_device
from labeler.io import storage


def prepare_worker(device: str, cpu_threads: int | None, storage_options: dict | None) -> torch.device:
    """Apply the run's storage options, cap torch's CPU threads, and resolve the device."""
    storage.configure(storage_options)
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    return resolve_device(device)
