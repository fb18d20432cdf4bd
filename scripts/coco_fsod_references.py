"""The COCO-FSOD reference set the method's authors sample, as a COCO file ``labeler build-bank`` reads.

    python scripts/coco_fsod_references.py --train instances_train2017.json --shots 10 --seed 33 --out refs.json
        [--classes person,bicycle,...]

The authors' sampler (``no_time_to_train/dataset/few_shot_sampling.py``, dataset ``few_shot_classes``), read
and written again here: Python's ``random.seed(seed)`` once; the annotations of the chosen classes in the
file's order, grouped by class in order of first appearance; per class, one ``random.shuffle`` of its
(image, annotation) pairs, then the first pairs whose annotation is usable (not crowd, box at least 32 px a
side and 10 px inside every border) and whose image is not used yet for that class, until ``--shots``.
A class with fewer is an error, as there. The same file, shots and seed give the same references; each
chosen annotation is one shot. The default classes are the 20 novel classes of COCO-FSOD (those of PASCAL
VOC).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

NOVEL_CLASSES = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat", "dog",
                 "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv")


def usable(annotation: dict, image: dict) -> bool:
    """The authors' ``is_valid_annotation``: not crowd, 32 px a side, 10 px inside the image."""
    x, y, w, h = annotation["bbox"]
    return (annotation.get("iscrowd", 0) != 1 and w >= 32 and h >= 32 and x >= 10 and y >= 10
            and image["width"] - (x + w) >= 10 and image["height"] - (y + h) >= 10)


def sample_references(document: dict, classes: list[str], shots: int, seed: int) -> dict:
    """The sampled references of ``document`` (a COCO train set) as a COCO document."""
    random.seed(seed)
    by_name = {c["name"]: c for c in document["categories"]}
    missing = [name for name in classes if name not in by_name]
    if missing:
        raise SystemExit(f"classes not in the training set: {', '.join(missing)}")
    wanted = {by_name[name]["id"] for name in classes}
    images = {image["id"]: image for image in document["images"]}
    annotations = {annotation["id"]: annotation for annotation in document["annotations"]}
    per_class: dict[int, list[tuple[int, int]]] = {}
    for annotation_id, annotation in annotations.items():
        if annotation["category_id"] in wanted and annotation.get("isimpossible") != 1:
            per_class.setdefault(annotation["category_id"], []).append((annotation["image_id"], annotation_id))
    chosen = []
    for category_id, pairs in per_class.items():
        random.shuffle(pairs)
        used: list[int] = []
        for image_id, annotation_id in pairs:
            if not usable(annotations[annotation_id], images[image_id]) or image_id in used:
                continue
            used.append(image_id)
            chosen.append(annotations[annotation_id])
            if len(used) >= shots:
                break
        if len(used) < shots:
            raise SystemExit(f"class {category_id}: only {len(used)} usable references for {shots} shots")
    kept_images = sorted({a["image_id"] for a in chosen})
    return {"images": [images[i] for i in kept_images], "annotations": sorted(chosen, key=lambda a: a["id"]),
            "categories": [c for c in document["categories"] if c["id"] in wanted],
            "info": {"description": f"COCO-FSOD references: {shots} shots, seed {seed} (the authors' sampler)"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="COCO instances_train2017.json")
    parser.add_argument("--shots", type=int, required=True)
    parser.add_argument("--seed", type=int, default=33)
    parser.add_argument("--classes", default=",".join(NOVEL_CLASSES), help="names, comma-separated")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.train) as handle:
        document = json.load(handle)
    classes = [name.strip() for name in args.classes.split(",") if name.strip()]
    references = sample_references(document, classes, args.shots, args.seed)
    with open(args.out, "w") as handle:
        json.dump(references, handle)
    print(f"{args.out}: {len(references['annotations'])} references of {len(classes)} classes", file=sys.stderr)


if __name__ == "__main__":
    main()
