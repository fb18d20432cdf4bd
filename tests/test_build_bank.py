"""build-bank end to end on generated references with random:tiny models."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from labeler.bank.build import _BoxMasker, _reference_masks, build_bank
from labeler.bank.file import load_bank
from labeler.io.coco import read_coco
from labeler.io.images import decode_image
from labeler.io.masks import segmentation_to_mask
from labeler.method.crops import context_crop_box, crop_reference
from labeler.models import load_dinov2, load_sam2
from labeler.synthetic import SHAPE_CLASSES, generate_dataset

from .conftest import load_json, write_json

TINY = dict(dinov2="random:tiny", sam2="random:tiny", device="cpu")


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sam2_tiny.pt"
    torch.save({"model": load_sam2("random:tiny").state_dict()}, path)
    return f"{path}?config=tiny"


def _refs(tmp_path, kind, n=4, seed=5, objects=(2, 3)):
    return generate_dataset(tmp_path, n, seed=seed, segmentation=kind, objects_per_image=objects)


def _expected_prototype(refs, annotation_id, context_ratio=0.2):
    """Recompute one instance prototype by hand from its files."""
    dataset = read_coco(str(refs))
    annotation = next(a for a in dataset.annotations if a.id == annotation_id)
    image = dataset.images[annotation.image_id]
    pixels = decode_image((refs.parent / "images" / image.file_name).read_bytes())
    mask = segmentation_to_mask(annotation.segmentation, *pixels.shape[:2], where="t")
    encoder = load_dinov2("random:tiny")
    box = context_crop_box(annotation.bbox, pixels.shape[:2], context_ratio)
    crop, weights = crop_reference(torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(mask), box, 518, 37)
    features = encoder.patch_features(crop[None])[0]
    return (weights[..., None] * features).sum((0, 1)) / weights.sum()


@pytest.mark.parametrize("kind", ["polygon", "rle", "rle-uncompressed"])
def test_every_instance_is_its_own_shot(tmp_path, kind):
    refs = _refs(tmp_path, kind)
    document = load_json(refs)
    bank = build_bank(str(refs), str(tmp_path / "images"), **TINY)
    assert sorted(bank.annotation_ids) == sorted(a["id"] for a in document["annotations"])
    assert bank.category_ids == sorted(c.id for c in SHAPE_CLASSES)
    counts = {c.id: sum(a["category_id"] == c.id for a in document["annotations"]) for c in SHAPE_CLASSES}
    assert bank.shots_per_class() == counts
    assert torch.allclose(bank.class_prototypes.norm(dim=1), torch.ones(len(SHAPE_CLASSES)))
    # Two instances of one image are two different prototypes, each from its own mask.
    for row in (0, len(bank.annotation_ids) - 1):
        expected = _expected_prototype(refs, bank.annotation_ids[row])
        assert torch.allclose(bank.instance_prototypes[row], expected, atol=1e-5)
    assert len({tuple(p.tolist()) for p in bank.instance_prototypes}) == len(bank.annotation_ids)
    # Each class prototype is the normalised mean of its rows.
    for position in range(len(bank.categories)):
        rows = bank.instance_prototypes[bank.instance_class == position]
        assert torch.allclose(bank.class_prototypes[position], torch.nn.functional.normalize(rows.mean(0), dim=0), atol=1e-6)


def test_compressed_and_uncompressed_rle_give_the_same_bank(tmp_path):
    a = build_bank(str(_refs(tmp_path / "a", "rle")), str(tmp_path / "a" / "images"), **TINY)
    b = build_bank(str(_refs(tmp_path / "b", "rle-uncompressed")), str(tmp_path / "b" / "images"), **TINY)
    assert torch.equal(a.class_prototypes, b.class_prototypes)


def test_box_only_references_use_sam2_from_a_checkpoint(tmp_path, sam2_checkpoint):
    refs = _refs(tmp_path, "box", n=3)
    bank = build_bank(str(refs), str(tmp_path / "images"), dinov2="random:tiny", sam2=sam2_checkpoint, device="cpu")
    assert len(bank.annotation_ids) == len(load_json(refs)["annotations"])
    assert torch.isfinite(bank.instance_prototypes).all()


def test_box_only_without_loadable_sam2_is_a_clear_error(tmp_path, run_cli):
    refs = _refs(tmp_path, "box", n=2)
    result = run_cli("build-bank", "--refs", refs, "--images", tmp_path / "images", "--out", tmp_path / "b.safetensors",
                     "--dinov2", "random:tiny", "--sam2", tmp_path / "missing.pt?config=tiny", "--device", "cpu")
    assert result.exit_code == 2 and "missing.pt: no such file" in result.stderr


class _EmptyMasker(_BoxMasker):
    """A SAM2 stand-in that finds nothing in any box."""

    def __init__(self):
        super().__init__("unused", torch.device("cpu"))

    def masks(self, pixels, boxes):
        return [np.zeros(pixels.shape[1:], dtype=np.uint8) for _ in boxes]


def test_empty_sam2_mask_falls_back_to_the_filled_box_with_a_warning(tmp_path, caplog):
    refs = _refs(tmp_path, "box", n=1, objects=(1, 1))
    dataset = read_coco(str(refs))
    annotation = dataset.annotations[0]
    pixels = decode_image((tmp_path / "images" / dataset.images[annotation.image_id].file_name).read_bytes())
    (mask,) = _reference_masks(dataset, [annotation], pixels, _EmptyMasker())
    x, y, w, h = annotation.bbox
    assert mask.sum() == w * h and mask[int(y) : int(y + h), int(x) : int(x + w)].all()
    assert f"annotation {annotation.id}: SAM2 returned an empty mask" in caplog.text


def test_mixed_kinds_with_crowd_and_non_contiguous_ids(tmp_path, sam2_checkpoint):
    refs = _refs(tmp_path, "mixed", n=4)
    document = load_json(refs)
    crowd = document["annotations"][0]
    crowd["iscrowd"] = 1
    write_json(refs, document)
    bank = build_bank(str(refs), str(tmp_path / "images"), dinov2="random:tiny", sam2=sam2_checkpoint, device="cpu")
    assert crowd["id"] not in bank.annotation_ids
    assert len(bank.annotation_ids) == len(document["annotations"]) - 1


def test_cli_end_to_end_with_k_shots_is_deterministic(tmp_path, refs_mixed):
    images = refs_mixed.parent / "images"
    command = [sys.executable, "-m", "labeler", "build-bank", "--refs", str(refs_mixed), "--images", str(images),
               "--dinov2", "random:tiny", "--sam2", "random:tiny", "--shots", "1", "--seed", "3", "--device", "cpu"]
    first = subprocess.run(command + ["--out", str(tmp_path / "a.safetensors")], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(command + ["--out", str(tmp_path / "b.safetensors")], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    a, b = load_bank(str(tmp_path / "a.safetensors")), load_bank(str(tmp_path / "b.safetensors"))
    assert a.content_hash == b.content_hash
    assert set(a.shots_per_class().values()) == {1} and a.sampling == {"shots": 1, "seed": 3}
    assert "wrote" in first.stdout and "class prototype cosine similarity" in first.stdout
    info = subprocess.run([sys.executable, "-m", "labeler", "bank-info", str(tmp_path / "a.safetensors")],
                          capture_output=True, text=True)
    assert info.returncode == 0 and "disc" in info.stdout and a.content_hash in info.stdout


def _break(kind, document, root):
    annotation = document["annotations"][0]
    if kind == "missing image":
        (root / "images" / document["images"][0]["file_name"]).unlink()
        return document["images"][0]["file_name"] + ": no such file"
    if kind == "unknown category":
        annotation["category_id"] = 999
        return f"annotation {annotation['id']}: unknown category_id 999"
    if kind == "zero-area mask":
        height, width = document["images"][0]["height"], document["images"][0]["width"]
        annotation["segmentation"] = {"size": [height, width], "counts": [height * width]}
        return f"annotation {annotation['id']}: empty mask (zero area)"
    if kind == "zero-area box":
        annotation["bbox"] = [5, 5, 0, 10]
        return f"annotation {annotation['id']}: box [5.0, 5.0, 0.0, 10.0] has zero area"
    if kind == "class without reference":
        document["categories"].append({"id": 77, "name": "ghost"})
        return "category 77 (ghost) has no reference annotation"
    if kind == "file_name escaping root":
        document["images"][0]["file_name"] = "../../etc/passwd"
        return "escapes the image root"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["missing image", "unknown category", "zero-area mask", "zero-area box", "class without reference",
     "file_name escaping root"],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, run_cli, kind):
    refs = _refs(tmp_path, "polygon", n=3)
    document = load_json(refs)
    expected = _break(kind, document, tmp_path)
    write_json(refs, document)
    out = tmp_path / "bank.safetensors"
    result = run_cli("build-bank", "--refs", refs, "--images", tmp_path / "images", "--out", out,
                     "--dinov2", "random:tiny", "--device", "cpu")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_malformed_json_and_too_few_shots(tmp_path, run_cli, refs_mixed):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    common = ("--images", tmp_path, "--out", tmp_path / "b.safetensors", "--dinov2", "random:tiny", "--device", "cpu")
    result = run_cli("build-bank", "--refs", bad, *common)
    assert result.exit_code == 2 and "bad.json: malformed JSON" in result.stderr
    result = run_cli("build-bank", "--refs", refs_mixed, *common, "--shots", "50")
    assert result.exit_code == 2 and "usable references for --shots 50" in result.stderr


def test_debug_shows_the_traceback(tmp_path, run_cli):
    bad = tmp_path / "bad.json"
    bad.write_text("[")
    with pytest.raises(Exception, match="malformed JSON"):
        run_cli("--debug", "build-bank", "--refs", bad, "--images", tmp_path, "--out", tmp_path / "b.safetensors")


@pytest.mark.parametrize("names, message", [
    (["dup", "disc", "dup"], "categories 1 and 7 are both named 'dup'"),  # ids 1, 3, 7, 12
    (["Dog", "square", " Dog "], "categories 1 and 7 are both named 'Dog'"),  # trimmed
    (["ﬁsh", "square", "fish"], "categories 1 and 7 are both named 'fish'"),  # NFKC: the ligature is f + i
    (["disc", "bad-\ud800", "star"], "category 3: its name 'bad-\\\\ud800' is not valid Unicode"),
    (["disc", "   ", "star"], "category 3: its name is blank"),
])
def test_class_names_every_command_can_key_by(tmp_path, run_cli, names, message):
    """Issue 26, items 4 and 6: two classes named alike were merged by thresholds, --classes and review merge;
    a lone surrogate stopped the run's writers ("2 images were still unlabelled after 3 passes")."""
    refs = generate_dataset(tmp_path, 3, seed=4, objects_per_image=(3, 3))
    document = load_json(refs)
    for category, name in zip(document["categories"], names):
        category["name"] = name
    write_json(refs, document)
    result = run_cli("build-bank", "--refs", refs, "--images", tmp_path / "images", "--out", tmp_path / "b.safetensors",
                     "--dinov2", "random:tiny", "--sam2", "random:tiny", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert message.replace("\\\\", "\\") in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b.safetensors").exists()
