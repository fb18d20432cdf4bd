"""``torch.compile`` once per cluster, not once per actor: the compiled artifacts of one actor, shared with the
others through storage every node reads (docs/PERFORMANCE.md, "Compile once per cluster").

PyTorch keeps what it compiles (inductor's graphs with their Triton kernels, AOTAutograd's graphs,
autotuning results) in a cache on the local disk, so a second process on the same machine compiles fast; an
actor on a new node, as autoscaling adds them, starts from nothing and compiles for a minute or more. Here the
first actor of a stage saves PyTorch's portable form of that cache (``torch.compiler.save_cache_artifacts``)
after its first batch, to a file named by everything the compiled code depends on (:func:`cache_name`), and
every later actor loads it (``torch.compiler.load_cache_artifacts``) before it compiles.

A cache is never needed: a file that cannot be read, loaded or written is logged and the actor compiles as
it would without one. The file holds compiled code and pickled graphs, as PyTorch's own on-disk cache does:
point ``--compile-cache`` only at storage as trusted as the code being run (the default is the run's own
``OUT/_state/compile-cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from typing import Any

import torch

from labeler import __version__
from labeler.io import storage

log = logging.getLogger(__name__)

#: File name suffix of a saved cache.
SUFFIX = ".torch-compile"


def device_description(device: torch.device) -> dict[str, Any]:
    """What compiled kernels depend on about the device: its kind, name and compute capability."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"type": "cuda", "name": torch.cuda.get_device_name(index),
                "capability": list(torch.cuda.get_device_capability(index)), "cuda": torch.version.cuda}
    return {"type": device.type, "machine": platform.machine()}


def cache_name(stage: str, settings: dict[str, Any], device: torch.device) -> str:
    """``<stage>-<hash>`` + :data:`SUFFIX`: the hash covers the stage's settings (models, dtype, shapes),
    the device, and the versions of torch, Python and labeler."""
    key = {"stage": stage, "settings": settings, "device": device_description(device), "torch": torch.__version__,
           "python": platform.python_version(), "labeler": __version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"{stage}-{digest}{SUFFIX}"


class CompileCache:
    """One stage's compile cache file in ``folder`` (a path or URI every node can read and write)."""

    def __init__(self, folder: str, stage: str, settings: dict[str, Any], device: torch.device):
        self.uri = f"{folder.rstrip('/')}/{cache_name(stage, settings, device)}"
        self.loaded = False
        self.saved = False

    def load(self) -> bool:
        """Load the saved artifacts into PyTorch's caches, if the file exists; True when loaded."""
        try:
            if not storage.exists(self.uri):
                return False
            info = torch.compiler.load_cache_artifacts(storage.read_bytes(self.uri))
        except Exception as error:  # a cache is never needed: compile as if there were none
            log.warning("compile cache %s not loaded (%s); compiling without it", self.uri, error)
            return False
        self.loaded = info is not None
        if self.loaded:
            log.info("compile cache %s loaded: %s", self.uri, {k: len(v) for k, v in info.artifacts.items()})
        return self.loaded

    def save(self) -> bool:
        """Save what this process compiled, once, unless the file was there when it started; True when written.
        Called after each batch: the first batch compiles the stage."""
        if self.saved or self.loaded:
            return False
        try:
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is None:  # nothing compiled yet (a batch of error rows): try after the next one
                return False
            self.saved = True
            storage.write_bytes_atomic(self.uri, artifacts[0])
        except Exception as error:  # the run goes on; the next actor compiles for itself
            log.warning("compile cache %s not saved (%s)", self.uri, error)
            return False
        return True
