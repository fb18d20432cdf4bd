"""Build SAM2 models from a spec: hub id, checkpoint path or ``random:<arch>``.

Every non-hub spec goes through one path: load the OmegaConf config, apply
the post-processing overrides that ``sam2.build_sam.build_sam2`` applies,
instantiate with Hydra, then load the weights with
``torch.load(weights_only=True)`` (never unpickling arbitrary objects).
Hub ids go through ``sam2``'s own hub builder.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from labeler.errors import ModelLoadError
from labeler.io import storage
from labeler.models.hub_access import hub_file
from labeler.models.spec import ModelSpec, parse_spec

TINY_CONFIG = Path(__file__).parent / "configs" / "sam2_tiny.yaml"

#: ``random:<arch>`` names and the config each builds.
RANDOM_ARCHS: dict[str, str] = {
    "tiny": str(TINY_CONFIG),
    "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

#: Same overrides as ``build_sam2(apply_postprocessing=True)``: fall back to
#: multimask output when a single-mask prediction is unstable.
_POSTPROCESSING = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}

RANDOM_SEED = 0


def _hub_files() -> dict[str, tuple[str, str]]:
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    return HF_MODEL_ID_TO_FILENAMES


def _config_path(name: str) -> Path:
    """Find a config: ``tiny``, a yaml file, or a config of the sam2 package."""
    import sam2

    if name == "tiny":
        return TINY_CONFIG
    candidate = Path(name).expanduser()
    if candidate.suffix in {".yaml", ".yml"} and candidate.is_file():
        return candidate
    package_root = Path(sam2.__file__).parent
    stem = name if name.endswith(".yaml") else f"{name}.yaml"
    for relative in (stem, f"configs/{stem}", f"configs/sam2.1/{stem}", f"configs/sam2/{stem}"):
        if (package_root / relative).is_file():
            return package_root / relative
    raise ModelLoadError(f"SAM2 config {name!r}: not a yaml file nor a config of the sam2 package")


def load_config(name: str) -> DictConfig:
    """Load a SAM2 model config with the post-processing overrides applied."""
    config = OmegaConf.load(_config_path(name))
    for key, value in _POSTPROCESSING.items():
        OmegaConf.update(config, key, value, force_add=True)
    OmegaConf.resolve(config)
    return config


def _instantiate(config: DictConfig) -> torch.nn.Module:
    from hydra.utils import instantiate

    return instantiate(config.model, _recursive_=True)


def _config_for_checkpoint(path: str) -> str:
    """Infer the config of an official checkpoint from its file name."""
    name = Path(path).name
    for config, checkpoint in _hub_files().values():
        if checkpoint == name:
            return config
    raise ModelLoadError(
        f"SAM2 checkpoint {path}: cannot tell its config from the file name; "
        f"write the spec as '{path}?config=sam2.1_hiera_l' (or tiny, or a yaml path)"
    )


def load_checkpoint_weights(model: torch.nn.Module, uri: str) -> None:
    """Load a SAM2 checkpoint (``{"model": state_dict}`` or a bare state dict).

    Uses ``torch.load(weights_only=True)``: a checkpoint carrying a pickled
    object that is not plain tensors and containers is refused, never run.
    """
    data = storage.read_bytes(uri)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"SAM2 checkpoint {uri}: cannot be loaded safely: {first_line}") from None
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"SAM2 checkpoint {uri}: expected a state dict, got {type(state).__name__}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"SAM2 checkpoint {uri} does not match its config: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )


def build_random_sam2(arch: str) -> torch.nn.Module:
    """A SAM2 of architecture ``arch`` with deterministic random weights."""
    if arch not in RANDOM_ARCHS:
        raise ModelLoadError(f"random:{arch}: unknown SAM2 architecture; choose from {', '.join(RANDOM_ARCHS)}")
    config = load_config(RANDOM_ARCHS[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _instantiate(config)


def load_sam2(text: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build the SAM2 model a spec names, in eval mode on ``device``.

    Raises:
        ModelLoadError: the spec is unknown, the files are missing, the
            checkpoint is unsafe or does not match its config, or the hub
            cannot be reached.
    """
    spec: ModelSpec = parse_spec(text, local_exists=Path(text.split("?config=")[0]).expanduser().exists())
    if spec.kind == "random":
        model = build_random_sam2(spec.value)
    elif spec.kind == "hub":
        model = _load_from_hub(spec.value)
    else:
        config = load_config(spec.config or _config_for_checkpoint(spec.value))
        model = _instantiate(config)
        load_checkpoint_weights(model, spec.value)
    return model.to(device).eval()


def _load_from_hub(model_id: str) -> torch.nn.Module:
    """The hub's checkpoint (from the local cache when there, :mod:`labeler.models.hub_access`),
    loaded as a local checkpoint is."""
    if model_id not in _hub_files():
        raise ModelLoadError(f"SAM2 hub id {model_id!r} is not one of: {', '.join(_hub_files())}")
    config_name, checkpoint_name = _hub_files()[model_id]
    checkpoint = hub_file(model_id, checkpoint_name, what=f"SAM2 {model_id} (hub)")
    model = _instantiate(load_config(config_name))
    load_checkpoint_weights(model, checkpoint)
    return model
