"""Build DINOv2 encoders from a spec: hub id, transformers folder or ``random:<arch>``.

``transformers`` is imported when a model is built, not with this module:
it takes seconds, and processes that never hold DINOv2 (a SAM2 actor with
grid prompts) import this module through :mod:`labeler.models`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labeler.errors import ModelLoadError
from labeler.io import storage
from labeler.models.hub_access import prepare_hub_model
from labeler.models.spec import parse_spec

if TYPE_CHECKING:
    from transformers import Dinov2Config, PreTrainedModel

#: ``random:<arch>``: the published DINOv2 ViT sizes (patch 14, 518 input)
#: and a tiny one for tests and the demo.
RANDOM_ARCHS: dict[str, dict] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}

RANDOM_SEED = 0


def random_config(arch: str) -> Dinov2Config:
    """The transformers config of a ``random:<arch>`` DINOv2."""
    if arch not in RANDOM_ARCHS:
        raise ModelLoadError(f"random:{arch}: unknown DINOv2 architecture; choose from {', '.join(RANDOM_ARCHS)}")
    from transformers import Dinov2Config

    return Dinov2Config(image_size=518, patch_size=14, mlp_ratio=4, **RANDOM_ARCHS[arch])


def build_random_dinov2(arch: str) -> PreTrainedModel:
    """A DINOv2 of architecture ``arch`` with deterministic random weights."""
    from transformers import Dinov2Model

    config = random_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return Dinov2Model(config)


def load_dinov2_model(text: str) -> PreTrainedModel:
    """Load the transformers DINOv2 model a spec names (on the CPU, eval mode).

    Weights are read from safetensors only, so loading never unpickles.
    """
    spec = parse_spec(text, local_exists=Path(text).expanduser().exists())
    if spec.config is not None:
        raise ModelLoadError(f"DINOv2 spec {text!r}: '?config=' is for SAM2 checkpoints only")
    if spec.kind == "random":
        model = build_random_dinov2(spec.value)
    elif spec.kind == "hub":
        what = f"DINOv2 {spec.value} (hub)"
        model = _from_pretrained(spec.value, what=what, local_files_only=prepare_hub_model(spec.value, what=what))
    elif storage.is_local(spec.value):
        local = spec.value.removeprefix("file://")
        if not Path(local).expanduser().is_dir():
            raise ModelLoadError(f"DINOv2 {spec.value}: not a transformers model folder")
        model = _from_pretrained(str(Path(local).expanduser()), what=f"DINOv2 {spec.value}")
    else:
        with tempfile.TemporaryDirectory(prefix="labeler-dinov2-") as folder:
            fs, path = storage.filesystem(spec.value)
            if not fs.isdir(path):
                raise ModelLoadError(f"DINOv2 {spec.value}: not a transformers model folder")
            fs.get(path.rstrip("/") + "/", folder, recursive=True)
            model = _from_pretrained(folder, what=f"DINOv2 {spec.value}")
    if model.config.model_type not in {"dinov2", "dinov2_with_registers"}:
        raise ModelLoadError(f"DINOv2 {text}: model type {model.config.model_type!r} is not DINOv2")
    return model.eval()


def _from_pretrained(source: str, *, what: str, local_files_only: bool = False) -> PreTrainedModel:
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(source, use_safetensors=True, local_files_only=local_files_only)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "not found"
        raise ModelLoadError(f"{what}: cannot be loaded: {first_line}") from None
