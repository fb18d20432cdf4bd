"""scripts/reproduce_coco_fsod.sh, the command a user runs on COCO 2017, end to end on a tiny stand-in with
COCO's folder layout and random models; and the authors' reference sampler, rule by rule."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeler.synthetic import generate_dataset

from .conftest import load_json

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from coco_fsod_references import sample_references, usable  # noqa: E402

#: The stand-in's shape classes under COCO names: three of the novel classes and one base class.
NAMES = {"disc": "person", "square": "car", "triangle": "dog", "star": "giraffe"}


def coco_split(root: Path, split: str, images: int, seed: int) -> None:
    made = generate_dataset(root / f"made-{split}", images, seed=seed, subfolders=False, image_format="jpg",
                            objects_per_image=(1, 2))
    document = load_json(made)
    for category in document["categories"]:
        category["name"] = NAMES[category["name"]]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
    shutil.move(str(made.parent / "images"), str(root / f"{split}2017"))
    shutil.rmtree(made.parent)


def test_the_reproduction_command_end_to_end_on_a_stand_in(tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    coco_split(root, "train", 12, seed=1)
    coco_split(root, "val", 2, seed=2)
    out = tmp_path / "out"
    env = {**os.environ, "SHOTS": "2", "SAM2": "random:tiny", "DINOV2": "random:tiny", "CLASSES": "person,car,dog",
           "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RUN_ARGS": "--points-per-side 4 --batch-size 4 --max-error-rate 1"}
    done = subprocess.run(["bash", str(SCRIPTS / "reproduce_coco_fsod.sh"), str(root), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line.split("\t") for line in (out / "table.tsv").read_text().splitlines()]
    assert table[0] == ["shots", "merge", "bbox nAP", "segm nAP", "published bbox", "published segm"]
    assert [row[:2] for row in table[1:]] == [["2", "soft"], ["2", "graph-diffusion"]]
    assert all(0.0 <= float(row[2]) <= 100.0 and 0.0 <= float(row[3]) <= 100.0 for row in table[1:])
    for shots in (2,):
        references = load_json(out / f"refs-{shots}.json")
        assert sorted(c["name"] for c in references["categories"]) == ["car", "dog", "person"]
        assert len(references["annotations"]) == 3 * shots
        report = load_json(out / f"eval-{shots}-graph-diffusion.json")
        assert sorted(c["name"] for c in report["categories"]) == ["car", "dog", "person"]  # novel classes only
        rescored = load_json(out / f"run-{shots}-graph-diffusion" / "run.json")
        assert rescored["settings"]["merge"] == "graph-diffusion"
        assert rescored["rescored_from"]["out"] == str(out / f"run-{shots}-soft")


def test_the_sampler_follows_the_authors_rules():
    """One shuffle per class in order of first appearance, usable annotations only, one per image."""
    images = [{"id": i, "width": 200, "height": 200} for i in range(1, 7)]
    box, small, edge = [20, 20, 40, 40], [20, 20, 20, 40], [2, 20, 40, 40]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": box}, {"id": 2, "image_id": 1, "category_id": 5, "bbox": box},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": box}, {"id": 4, "image_id": 3, "category_id": 5, "bbox": small},
        {"id": 5, "image_id": 4, "category_id": 5, "bbox": edge}, {"id": 6, "image_id": 5, "category_id": 5, "bbox": box},
        {"id": 7, "image_id": 6, "category_id": 7, "bbox": box, "iscrowd": 1}, {"id": 8, "image_id": 6, "category_id": 9,
                                                                                "bbox": box},
    ]
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "cow"}]}
    assert not usable(annotations[3], images[2]) and not usable(annotations[4], images[3])
    assert not usable(annotations[6], images[5]) and usable(annotations[0], images[0])
    chosen = sample_references(document, ["cat", "dog"], 1, seed=33)
    random.seed(33)
    cats, dogs = [(1, 1), (1, 2), (3, 4), (4, 5), (5, 6)], [(2, 3), (6, 7)]
    random.shuffle(cats)
    random.shuffle(dogs)
    first_cat = next(a for i, a in cats if a in (1, 2, 6))
    assert [a["id"] for a in chosen["annotations"]] == sorted([first_cat, 3])
    assert [c["name"] for c in chosen["categories"]] == ["cat", "dog"]
    two = sample_references(document, ["cat"], 2, seed=33)
    assert sorted(a["image_id"] for a in two["annotations"]) == [1, 5]  # one per image: 1 and 2 share image 1
    with pytest.raises(SystemExit, match="only 2 usable references for 3 shots"):
        sample_references(document, ["cat"], 3, seed=33)
