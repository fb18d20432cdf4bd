"""Model specs: random builds, and each real on-disk format loaded back through its spec."""

import pickle

import numpy as np
import pytest
import torch

from labeler.devices import resolve_device
from labeler.errors import LabelerError, ModelLoadError
from labeler.models import load_dinov2, load_sam2
from labeler.models.sam2_inference import box_prompts, decode_prompts, encode_images, sam2_input
from labeler.models.spec import parse_spec

from .conftest import PickleBomb


@pytest.mark.parametrize(
    "text, kind, value, config",
    [
        ("random:tiny", "random", "tiny", None),
        ("facebook/sam2.1-hiera-large", "hub", "facebook/sam2.1-hiera-large", None),
        ("s3://bucket/ckpt.pt", "path", "s3://bucket/ckpt.pt", None),
        ("./ckpt.pt?config=tiny", "path", "./ckpt.pt", "tiny"),
        ("/m/dinov2", "path", "/m/dinov2", None),
    ],
)
def test_parse_spec(text, kind, value, config):
    spec = parse_spec(text, local_exists=False)
    assert (spec.kind, spec.value, spec.config, spec.text) == (kind, value, config, text)


def test_existing_local_folder_wins_over_hub_id():
    assert parse_spec("facebook/dinov2-large", local_exists=True).kind == "path"


@pytest.mark.parametrize("text", ["", "random:", "not a spec"])
def test_bad_specs(text):
    with pytest.raises(ModelLoadError):
        parse_spec(text, local_exists=False)


def test_random_models_are_deterministic():
    a, b = load_sam2("random:tiny"), load_sam2("random:tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    images = torch.rand(1, 3, 518, 518)
    assert torch.equal(load_dinov2("random:tiny").patch_features(images), load_dinov2("random:tiny").patch_features(images))


def test_unknown_random_arch_lists_choices():
    with pytest.raises(ModelLoadError, match="tiny, t, s, b\\+, l"):
        load_sam2("random:huge")
    with pytest.raises(ModelLoadError, match="tiny, small, base, large, giant"):
        load_dinov2("random:huge")


def test_sam2_checkpoint_round_trip(tmp_path):
    model = load_sam2("random:tiny")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)  # differ from the random init, so loading must really happen
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    loaded = load_sam2(f"{path}?config=tiny")
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_sam2_checkpoint_config_mismatch(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"model": {"not.a.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelLoadError, match="does not match its config"):
        load_sam2(f"{path}?config=tiny")


def test_sam2_checkpoint_without_config_needs_an_official_name(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ModelLoadError, match="cannot tell its config"):
        load_sam2(str(path))



def test_pickle_payload_in_checkpoint_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": PickleBomb("PAYLOAD_RAN")}))
    with pytest.raises(ModelLoadError, match="cannot be loaded safely"):
        load_sam2(f"{path}?config=tiny")
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_dinov2_folder_round_trip(tmp_path):
    encoder = load_dinov2("random:tiny")
    with torch.no_grad():
        for parameter in encoder.model.parameters():
            parameter.mul_(1.5)
    encoder.model.save_pretrained(tmp_path / "dino")
    loaded = load_dinov2(str(tmp_path / "dino"))
    images = torch.rand(2, 3, 518, 518)
    assert torch.allclose(loaded.patch_features(images), encoder.patch_features(images))
    assert loaded.grid_size == 37 and loaded.feature_dim == 32 and loaded.prefix_tokens == 1


def test_dinov2_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not a transformers model folder"):
        load_dinov2(str(tmp_path / "missing"))


def test_dinov2_with_registers_drops_register_tokens(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=518, patch_size=14,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path / "reg")
    encoder = load_dinov2(str(tmp_path / "reg"))
    assert encoder.prefix_tokens == 5
    assert encoder.patch_features(torch.zeros(1, 3, 518, 518)).shape == (1, 37, 37, 32)


def test_box_prompt_decoding_shapes():
    model = load_sam2("random:tiny")
    features = encode_images(model, sam2_input(np.zeros((1, 256, 256, 3), dtype=np.uint8), "cpu"))
    coords, labels = box_prompts(torch.tensor([[10.0, 10.0, 50.0, 60.0], [0.0, 0.0, 80.0, 100.0]]), (100, 80), 256)
    assert torch.allclose(coords[0], torch.tensor([[32.0, 25.6], [160.0, 153.6]]))
    low_res, iou = decode_prompts(model, features, coords, labels, multimask_output=False)
    assert low_res.shape == (2, 1, 64, 64) and iou.shape == (2, 1)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(LabelerError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LabelerError, match="no CUDA device"):
            resolve_device("cuda:0")
