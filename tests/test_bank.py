"""The bank file: round trip and every way a file can be unusable."""

import json
import pickle
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from labeler.bank.file import FORMAT_MARKER, PrototypeBank, load_bank
from labeler.bank.info import confusable_pairs, describe_bank
from labeler.errors import BankError
from labeler.io.coco import Category

from .conftest import PickleBomb


def make_bank(class_vectors=None) -> PrototypeBank:
    instances = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 2.0]])
    classes = torch.tensor([0, 0, 1])
    protos = class_vectors if class_vectors is not None else F.normalize(torch.tensor([[0.9, 0.3, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    return PrototypeBank(
        class_prototypes=protos,
        instance_prototypes=instances,
        instance_class=classes,
        categories=[Category(4, "boat"), Category(9, "bird")],
        encoder="random:tiny",
        input_size=518,
        context_ratio=0.2,
        annotation_ids=[11, 12, 30],
        sampling={"shots": 1, "seed": 0},
    )


def test_round_trip(tmp_path):
    bank = make_bank()
    bank.save(str(tmp_path / "b.safetensors"))
    loaded = load_bank(str(tmp_path / "b.safetensors"))
    assert torch.equal(loaded.class_prototypes, bank.class_prototypes)
    assert torch.equal(loaded.instance_prototypes, bank.instance_prototypes)
    assert torch.equal(loaded.instance_class, bank.instance_class)
    assert loaded.categories == bank.categories and loaded.annotation_ids == [11, 12, 30]
    assert loaded.encoder == "random:tiny" and loaded.sampling == {"shots": 1, "seed": 0}
    assert loaded.content_hash == bank.content_hash and len(bank.content_hash) == 64
    assert loaded.shots_per_class() == {4: 2, 9: 1}


def test_hash_changes_with_content():
    other = make_bank()
    other.annotation_ids = [11, 12, 31]
    assert PrototypeBank(**{**other.__dict__, "content_hash": ""}).content_hash != make_bank().content_hash


def test_truncated_file(tmp_path):
    data = make_bank().to_bytes()
    path = tmp_path / "t.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BankError, match="t.safetensors: not a readable safetensors file"):
        load_bank(str(path))


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_text("hello, I am text")
    with pytest.raises(BankError, match="not a readable safetensors file"):
        load_bank(str(path))


def test_safetensors_that_is_not_a_bank(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(BankError, match="not a labeler prototype bank"):
        load_bank(str(path))


def _rewrite_metadata(data: bytes, change) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    change(header["__metadata__"])
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + length :]


def test_newer_format_is_refused_with_upgrade_hint(tmp_path):
    path = tmp_path / "new.safetensors"
    path.write_bytes(_rewrite_metadata(make_bank().to_bytes(), lambda m: m.update(format_version="2")))
    with pytest.raises(BankError, match="format 2 is newer .* upgrade labeler"):
        load_bank(str(path))


def test_edited_content_fails_the_hash(tmp_path):
    def rename(metadata):
        bank = json.loads(metadata["bank"])
        bank["categories"][0]["name"] = "ship"
        metadata["bank"] = json.dumps(bank)

    path = tmp_path / "edited.safetensors"
    path.write_bytes(_rewrite_metadata(make_bank().to_bytes(), rename))
    with pytest.raises(BankError, match="content hash mismatch"):
        load_bank(str(path))


def test_flipped_tensor_byte_fails_the_hash(tmp_path):
    data = bytearray(make_bank().to_bytes())
    data[-5] ^= 0xFF
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match="content hash mismatch|NaN"):
        load_bank(str(path))


def test_inconsistent_shapes_rejected():
    with pytest.raises(BankError, match="2 class prototypes for 1 categories"):
        PrototypeBank(
            class_prototypes=torch.eye(2), instance_prototypes=torch.eye(2), instance_class=torch.tensor([0, 1]),
            categories=[Category(1, "a")], encoder="e", input_size=518, context_ratio=0.2, annotation_ids=[1, 2],
        )


def test_marker_is_recorded():
    data = make_bank().to_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    assert json.loads(data[8 : 8 + length])["__metadata__"]["format"] == FORMAT_MARKER


def test_confusable_pairs_and_description():
    near = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [1.0, 0.0, 0.1]]), dim=1)
    bank = make_bank(near)
    pairs = confusable_pairs(bank, 0.8)
    assert [(p.first, p.second) for p in pairs] == [("boat", "bird")]
    assert pairs[0].similarity == pytest.approx(float(near[0] @ near[1]))
    assert confusable_pairs(make_bank(), 0.8) == []
    text = describe_bank(bank)
    assert "warning: 'boat' and 'bird' have similar prototypes" in text and "boat" in text



def test_pickle_disguised_as_a_bank_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bank.safetensors"
    path.write_bytes(pickle.dumps({"class_prototypes": PickleBomb("BANK_PAYLOAD_RAN")}))
    with pytest.raises(BankError, match="not a readable safetensors file"):
        load_bank(str(path))
    assert not (tmp_path / "BANK_PAYLOAD_RAN").exists()


def bank_bytes_with(monkeypatch, **metadata) -> bytes:
    """A bank file whose metadata is out of range but whose content hash matches it,
    as a tampering tool that recomputes the hash would write it."""
    monkeypatch.setattr(PrototypeBank, "validate", lambda self: None)
    bank = make_bank()
    for key, value in metadata.items():
        setattr(bank, key, value)
    bank.content_hash = bank._compute_hash()
    data = bank.to_bytes()
    monkeypatch.undo()
    return data


@pytest.mark.parametrize("metadata, message", [
    ({"input_size": 0}, r"input_size 0 is not in \[14, 2048\]"),
    ({"input_size": 7}, r"input_size 7 is not in \[14, 2048\]"),
    ({"input_size": 10**6}, r"input_size 1000000 is not in \[14, 2048\]"),
    ({"categories": [Category(2**70, "boat"), Category(9, "bird")]}, "category ids must be 64-bit integers"),
    ({"categories": [Category(9, "boat"), Category(9, "bird")]}, "duplicate category ids"),
    ({"context_ratio": float("nan")}, "context_ratio nan is not in"),
    ({"annotation_ids": [11, 12, -2**64]}, "annotation ids must be 64-bit integers"),
    ({"encoder": ""}, "no encoder spec"),
])
def test_out_of_range_metadata_behind_a_valid_hash_is_refused_on_load(tmp_path, monkeypatch, metadata, message):
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bank_bytes_with(monkeypatch, **metadata))
    with pytest.raises(BankError, match=f"tampered.safetensors: {message}"):
        load_bank(str(path))


def test_a_bank_file_loads_only_with_the_hash_the_run_checked(tmp_path):
    from labeler.bank.file import BankFile

    path = tmp_path / "b.safetensors"
    make_bank().save(str(path))
    checked = BankFile.read(str(path))
    assert checked.load().content_hash == checked.content_hash == make_bank().content_hash
    other = make_bank(F.normalize(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1))
    swapped = BankFile(other.to_bytes(), checked.content_hash, checked.source)
    with pytest.raises(BankError, match="is not the checked"):
        swapped.load()
