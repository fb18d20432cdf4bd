"""``labeler review merge``: the reviewers' corrections back into a training set, and what they say.

Reads the export of a review (Label Studio's JSON export, or the COCO 1.0
export of CVAT) made from a folder of ``labeler review``, and writes into OUT:

* ``annotations/instances_{train,val}.json``: the final COCO training set.
  Reviewed images carry the reviewers' instances (an image a reviewer left
  empty stays, as a checked background image); every other ok image carries
  its auto-labels above the review's thresholds, and is left out when none is
  (as ``labeler export`` does). The split is ``labeler export``'s.
* ``annotations/reviewed.json``: the reviewed images and their instances
  alone, ready for ``labeler build-bank --refs`` as more references.
* ``report.json``: per class, how reviewers changed the auto-labels.

Per class, each reviewed image's auto-labels (those shown to the reviewer)
are matched one to one to its reviewed instances of the same class, best mask
IoU first, from IoU 0.5. A match is ``kept`` (IoU >= 0.9) or ``edited``; an
auto-label without a match was ``removed`` (``relabelled`` when it overlaps
an unmatched instance of another class by IoU >= 0.5); an instance without a
match was ``added``. Precision is matches / auto-labels, recall is matches /
reviewed instances. They are reported for the random share of the review
(an unbiased estimate of the whole run) and for all reviewed images (biased
toward hard images); classes are then ranked by the F1 of all reviewed
images, lowest first: those gain most from more reference shots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError
from labeler.export import SPLITS, rows_of_split
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_merge import write_coco
from labeler.io.label_studio import reviewed_instances
from labeler.io.masks import segmentation_to_mask
from labeler.io.rle import decode_masks
from labeler.io.run_output import iter_label_rows, run_categories
from labeler.label_filter import LabelFilter, label_filter_from_json
from labeler.review import read_selection

MATCH_IOU = 0.5
KEPT_IOU = 0.9


@dataclass
class ClassFigures:
    """How reviewers changed one class's auto-labels (module doc)."""

    auto: int = 0
    reviewed: int = 0
    kept: int = 0
    edited: int = 0
    removed: int = 0
    relabelled: int = 0
    added: int = 0

    @property
    def matched(self) -> int:
        return self.kept + self.edited

    @property
    def precision(self) -> float | None:
        return self.matched / self.auto if self.auto else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.reviewed if self.reviewed else None

    @property
    def f1(self) -> float | None:
        if not self.auto and not self.reviewed:
            return None
        return 2 * self.matched / (self.auto + self.reviewed)

    def add(self, other: ClassFigures) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict:
        rounded = {name: (None if value is None else round(value, 4))
                   for name, value in (("precision", self.precision), ("recall", self.recall), ("f1", self.f1))}
        return {**asdict(self), **rounded}


@dataclass(frozen=True)
class Instance:
    """One instance of an image: its category id and full-size mask."""

    category_id: int
    mask: np.ndarray


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def compare(auto: list[Instance], reviewed: list[Instance]) -> dict[int, ClassFigures]:
    """Per class, how ``reviewed`` changed ``auto`` on one image (module doc)."""
    figures: dict[int, ClassFigures] = {}

    def of(category_id: int) -> ClassFigures:
        return figures.setdefault(category_id, ClassFigures())

    for instance in auto:
        of(instance.category_id).auto += 1
    for instance in reviewed:
        of(instance.category_id).reviewed += 1
    ious = np.zeros((len(auto), len(reviewed)))
    if auto and reviewed:
        ious = np.asarray(mask_utils.iou([_rle(a.mask) for a in auto], [_rle(r.mask) for r in reviewed],
                                         [0] * len(reviewed)))
    pairs = sorted(((ious[i, j], i, j) for i in range(len(auto)) for j in range(len(reviewed))
                    if auto[i].category_id == reviewed[j].category_id and ious[i, j] >= MATCH_IOU), reverse=True)
    auto_free, reviewed_free = set(range(len(auto))), set(range(len(reviewed)))
    for iou, i, j in pairs:
        if i in auto_free and j in reviewed_free:
            auto_free.discard(i)
            reviewed_free.discard(j)
            match = of(auto[i].category_id)
            if iou >= KEPT_IOU:
                match.kept += 1
            else:
                match.edited += 1
    for i in sorted(auto_free):
        of(auto[i].category_id).removed += 1
        if any(ious[i, j] >= MATCH_IOU for j in reviewed_free):
            of(auto[i].category_id).relabelled += 1
    for j in reviewed_free:
        of(reviewed[j].category_id).added += 1
    return figures


def _detection(instance: Instance, name: str) -> dict:
    encoded = _rle(instance.mask)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(encoded))
    return {"category_id": instance.category_id, "category": name, "score": 1.0, "bbox": [x, y, w, h],
            "area": int(mask_utils.area(encoded)), "rle": encoded["counts"].decode("ascii")}


def _read_export(path: str) -> object:
    if not storage.exists(path):
        raise LabelerError(f"--labels {path}: no such file")
    try:
        return json.loads(storage.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelerError(f"--labels {path}: not a JSON file ({error})") from None


def _label_studio(tasks: list, sizes: dict[int, tuple[int, int]], by_name: dict[str, int],
                  path: str) -> dict[int, list[Instance]]:
    reviewed = {}
    for position, task in enumerate(tasks):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        image_id = data.get("labeler_image_id")
        if image_id not in sizes:
            raise LabelerError(f"--labels {path}: task {position} has no labeler_image_id of this review")
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations:
            continue  # not reviewed
        height, width = sizes[image_id]
        where = f"--labels {path}: task {task.get('id', position)}"
        instances = reviewed_instances(annotations[-1].get("result", []), height, width, where)
        reviewed[image_id] = [Instance(_known(i.name, by_name, where), i.mask) for i in instances]
    return reviewed


def _coco(document: dict, sizes: dict[int, tuple[int, int]], by_name: dict[str, int], ids_by_file: dict[str, int],
          path: str) -> dict[int, list[Instance]]:
    names = {c["id"]: c["name"] for c in document.get("categories", [])}
    image_ids = {}
    for image in document.get("images", []):
        image_id = ids_by_file.get(image["file_name"])
        if image_id is None:
            raise LabelerError(f"--labels {path}: image {image['file_name']!r} is not one of this review's")
        image_ids[image["id"]] = image_id
    reviewed: dict[int, list[Instance]] = {image_id: [] for image_id in image_ids.values()}
    for annotation in document.get("annotations", []):
        image_id = image_ids.get(annotation["image_id"])
        where = f"--labels {path}: annotation {annotation.get('id', '?')}"
        if image_id is None:
            raise LabelerError(f"{where}: its image {annotation['image_id']} is not listed")
        height, width = sizes[image_id]
        category = _known(names.get(annotation["category_id"], str(annotation["category_id"])), by_name, where)
        if annotation.get("segmentation"):
            mask = segmentation_to_mask(annotation["segmentation"], height, width, where=where).astype(bool)
        else:  # a box alone
            mask = np.zeros((height, width), dtype=bool)
            x, y, w, h = (round(v) for v in annotation["bbox"])
            mask[max(y, 0):y + h, max(x, 0):x + w] = True
        reviewed[image_id].append(Instance(category, mask))
    return reviewed


def _known(name: str, by_name: dict[str, int], where: str) -> int:
    if name not in by_name:
        raise LabelerError(f"{where}: class {name!r} is not one of the run's ({', '.join(by_name)})")
    return by_name[name]


@dataclass
class MergeResult:
    """What ``labeler review merge`` wrote and measured."""

    folder: Path
    images: int
    instances: int
    reviewed_images: int
    figures_random: dict[str, ClassFigures] = field(default_factory=dict)
    figures_all: dict[str, ClassFigures] = field(default_factory=dict)
    more_shots: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'class':<20} {'auto':>5} {'review':>6} {'kept':>5} {'edited':>6} {'removed':>7} {'added':>5}"
                 f" {'P(random)':>9} {'R(random)':>9} {'F1(all)':>8}"]

        def number(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        for name, total in self.figures_all.items():
            sampled = self.figures_random.get(name, ClassFigures())
            lines.append(f"{name:<20} {total.auto:>5} {total.reviewed:>6} {total.kept:>5} {total.edited:>6} "
                         f"{total.removed:>7} {total.added:>5} {number(sampled.precision):>9} "
                         f"{number(sampled.recall):>9} {number(total.f1):>8}")
        if self.more_shots:
            lines.append("more reference shots would help most: " + ", ".join(self.more_shots))
        return "\n".join(lines)


def merge_review(pred: str, review_dir: str, labels: str, out_dir: str, *, val_fraction: float = 0.1,
                 seed: int = 0) -> MergeResult:
    """Merge the reviewers' export ``labels`` of the review in ``review_dir`` into a training set (module doc)."""
    selection = read_selection(review_dir)
    categories = run_categories(pred)
    by_name = {c.name: c.id for c in categories}
    label_filter: LabelFilter = label_filter_from_json(selection["label_filter"], categories)
    chosen = {image["image_id"]: image for image in selection["images"]}
    sizes = {image_id: (image["height"], image["width"]) for image_id, image in chosen.items()}
    document = _read_export(labels)
    if isinstance(document, list):
        reviewed = _label_studio(document, sizes, by_name, labels)
    elif isinstance(document, dict) and "images" in document:
        reviewed = _coco(document, sizes, by_name, {i["file_name"]: i["image_id"] for i in chosen.values()}, labels)
    else:
        raise LabelerError(f"--labels {labels}: neither a Label Studio JSON export (a list of tasks) nor a COCO file")
    folder = Path(out_dir)
    result = _figures(pred, categories, label_filter, reviewed, chosen, folder)
    names = {c.id: c.name for c in categories}
    replaced = {image_id: [_detection(i, names[i.category_id]) for i in instances]
                for image_id, instances in reviewed.items()}
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    source_root = selection.get("source_root")
    for split in SPLITS:
        def pick(table: pa.Table, split: str = split) -> pa.Table:
            return with_reviewed_labels(rows_of_split(table, split, val_fraction, seed), replaced)

        target = folder / "annotations" / f"instances_{split}.json"
        counts = write_coco(pred, categories, target=str(target), label_filter=label_filter, with_scores=False,
                            drop_empty=True, keep_ids=frozenset(replaced), image_root=source_root, transform=pick)
        result.images += counts.images
        result.instances += counts.annotations
        if not counts.images and split == "val":
            target.unlink()
    reviewed_ids = pa.array(list(replaced), pa.int64())
    write_coco(pred, categories, target=str(folder / "annotations" / "reviewed.json"), with_scores=False,
               image_root=source_root, transform=lambda table: with_reviewed_labels(
                   table.filter(pc.is_in(table.column("image_id"), value_set=reviewed_ids)), replaced))
    (folder / "report.json").write_text(json.dumps({
        "reviewed_images": result.reviewed_images,
        "random_share": {name: f.to_json() for name, f in result.figures_random.items()},
        "all_reviewed": {name: f.to_json() for name, f in result.figures_all.items()},
        "more_shots": result.more_shots,
    }, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def with_reviewed_labels(table: pa.Table, replaced: dict[int, list[dict]]) -> pa.Table:
    """``table`` with the detections of reviewed images replaced by their reviewed instances;
    a table without reviewed images is returned as it is, without a pass through Python."""
    ids = table.column("image_id").to_pylist()
    if not any(i in replaced for i in ids):
        return table
    rows = table.to_pylist()
    for row in rows:
        if row["image_id"] in replaced:
            row["detections"] = replaced[row["image_id"]]
    return pa.Table.from_pylist(rows, schema=table.schema)


def _figures(pred: str, categories: list[Category], label_filter: LabelFilter, reviewed: dict[int, list[Instance]],
             chosen: dict[int, dict], folder: Path) -> MergeResult:
    names = {c.id: c.name for c in categories}
    random_share: dict[str, ClassFigures] = {c.name: ClassFigures() for c in categories}
    everything: dict[str, ClassFigures] = {c.name: ClassFigures() for c in categories}
    for row in iter_label_rows(pred, ["image_id", "height", "width", "detections"]):
        if row["image_id"] not in reviewed:
            continue
        kept = label_filter.kept(row["detections"])
        masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"]).astype(bool)
        auto = [Instance(d["category_id"], mask) for d, mask in zip(kept, masks)]
        for category_id, figures in compare(auto, reviewed[row["image_id"]]).items():
            everything[names[category_id]].add(figures)
            if chosen[row["image_id"]]["share"] == "random":
                random_share[names[category_id]].add(figures)
    ranked = sorted((f.f1, name) for name, f in everything.items() if f.f1 is not None and f.f1 < 1.0)
    return MergeResult(folder, 0, 0, len(reviewed), random_share, everything, [name for _, name in ranked])
