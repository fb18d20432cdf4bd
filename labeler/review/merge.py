"""``labeler review merge``: the reviewers' corrections back into a training set, and what they changed.

docs/review.md ("Back into a training set") is the contract: the export (Label Studio JSON, or CVAT's
COCO 1.0) is checked against the review and the run before anything is written; OUT then holds
``annotations/instances_{train,val}.json``, ``annotations/reviewed.json`` (more references for
``build-bank``) and ``report.json`` (per class, how reviewers changed the auto-labels: :func:`compare`).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError
from labeler.export.training_sets import rows_of_split, write_coco_splits
from labeler.io import storage
from labeler.io.coco import Category, check_bbox
from labeler.io.label_studio import reviewed_instances
from labeler.io.labels import detection_rle
from labeler.io.masks import segmentation_to_rle
from labeler.io.published_folder import building, local_folder
from labeler.label_filter import LabelFilter, label_filter_from_json
from labeler.outdir.merged_coco import write_coco
from labeler.outdir.shards import iter_label_rows
from labeler.review.prepare import read_selection
from labeler.run.manifest import read_manifest, run_categories

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
    """One instance of an image: its category id and its full-size mask as a pycocotools RLE."""

    category_id: int
    rle: dict


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
    if auto and reviewed:  # pycocotools skips pairs whose boxes do not meet
        ious = np.asarray(mask_utils.iou([a.rle for a in auto], [r.rle for r in reviewed], [0] * len(reviewed)))
    same_class = np.array([a.category_id for a in auto])[:, None] == np.array([r.category_id for r in reviewed])[None]
    rows, columns = np.nonzero(same_class & (ious >= MATCH_IOU)) if auto and reviewed else ((), ())
    pairs = sorted(zip(ious[rows, columns].tolist(), rows.tolist(), columns.tolist()), reverse=True) \
        if len(rows) else []
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
    free = sorted(reviewed_free)
    for i in sorted(auto_free):
        of(auto[i].category_id).removed += 1
        if free and (ious[i, free] >= MATCH_IOU).any():
            of(auto[i].category_id).relabelled += 1
    for j in free:
        of(reviewed[j].category_id).added += 1
    return figures


def _detection(instance: Instance, name: str) -> dict:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(instance.rle))
    counts = instance.rle["counts"]
    return {"category_id": instance.category_id, "category": name, "score": 1.0, "bbox": [x, y, w, h],
            "area": int(mask_utils.area(instance.rle)),
            "rle": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _read_export(path: str) -> object:
    if not storage.exists(path):
        raise LabelerError(f"--labels {path}: no such file")
    try:
        return json.loads(storage.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelerError(f"--labels {path}: not a JSON file ({error})") from None


@dataclass(frozen=True)
class _Review:
    """What the review chose: its images by id, and the run's classes by name."""

    chosen: dict[int, dict]
    by_name: dict[str, int]
    path: str  # the export, for messages

    def image(self, image_id: object, where: str) -> dict:
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in self.chosen:
            raise LabelerError(f"{where}: image {json.dumps(image_id)[:40]} is not one of this review's images")
        return self.chosen[image_id]

    def category(self, name: object, where: str) -> int:
        if not isinstance(name, str) or name not in self.by_name:
            raise LabelerError(f"{where}: class {json.dumps(name)[:60]} is not one of the run's "
                               f"({', '.join(self.by_name)})")
        return self.by_name[name]


def _label_studio(tasks: list, review: _Review) -> dict[int, list[Instance]]:
    reviewed: dict[int, list[Instance]] = {}
    seen: dict[int, str] = {}
    for position, task in enumerate(tasks):
        label = task.get("id", position) if isinstance(task, dict) else position
        where = f"--labels {review.path}: task {json.dumps(label)[:40]}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise LabelerError(f"{where}: no 'data' object; not a task of a Label Studio export")
        image = review.image(data.get("labeler_image_id"), where)
        if data.get("file_name") != image["file_name"]:
            raise LabelerError(f"{where}: its image {image['image_id']} is {image['file_name']!r} in this review, "
                               f"but the task says {json.dumps(data.get('file_name'))[:80]}: the export is of another "
                               "review")
        if image["image_id"] in seen:
            raise LabelerError(f"{where}: image {image['image_id']} ({image['file_name']}) has a second task "
                               f"(the first: task {seen[image['image_id']]}); export each task once")
        seen[image["image_id"]] = json.dumps(label)[:40]
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise LabelerError(f"{where}: 'annotations' must be a list of objects")
        submitted = [a for a in annotations if not a.get("was_cancelled")]
        if not submitted:
            continue  # not reviewed
        instances = reviewed_instances(submitted[-1].get("result", []), image["height"], image["width"], where)
        reviewed[image["image_id"]] = [Instance(review.category(i.name, where), i.rle) for i in instances]
    return reviewed


def _box_rle(bbox: object, height: int, width: int, where: str) -> dict:
    """A CVAT box alone as a filled box, clipped to the image."""
    x, y, w, h = check_bbox(bbox, where)
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        raise LabelerError(f"{where}: bbox {list(bbox)} lies outside the {width}x{height} image")
    return mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], dtype=np.float64), height, width)[0]


def _objects(document: dict, key: str, where: str) -> list[dict]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise LabelerError(f"{where}: '{key}' must be a list of objects")
    return value


def _integer(entry: dict, key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelerError(f"{where}: '{key}' must be an integer, got {json.dumps(value)[:40]}")
    return value


def _coco(document: dict, review: _Review) -> dict[int, list[Instance]]:
    where = f"--labels {review.path}"
    names = {}
    for category in _objects(document, "categories", where):
        if not isinstance(category.get("name"), str):
            raise LabelerError(f"{where}: category {json.dumps(category.get('id'))[:40]} has no 'name'")
        names[_integer(category, "id", f"{where}: a category")] = category["name"]
    by_file = {image["file_name"]: image for image in review.chosen.values()}
    image_ids: dict[int, dict] = {}
    files: set[str] = set()
    for image in _objects(document, "images", where):
        image_id = _integer(image, "id", f"{where}: an image")
        file_name = image.get("file_name")
        if not isinstance(file_name, str):
            raise LabelerError(f"{where}: image {image_id} has no 'file_name'")
        if file_name not in by_file:
            raise LabelerError(f"{where}: image {file_name!r} is not one of this review's")
        if file_name in files or image_id in image_ids:
            raise LabelerError(f"{where}: image {file_name!r} (id {image_id}) is listed twice")
        files.add(file_name)
        image_ids[image_id] = by_file[file_name]
    reviewed: dict[int, list[Instance]] = {image["image_id"]: [] for image in image_ids.values()}
    for position, annotation in enumerate(_objects(document, "annotations", where)):
        at = f"{where}: annotation {json.dumps(annotation.get('id', position))[:40]}"
        listed = _integer(annotation, "image_id", at)
        if listed not in image_ids:
            raise LabelerError(f"{at}: its image {listed} is not listed")
        image = image_ids[listed]
        category_id = _integer(annotation, "category_id", at)
        if category_id not in names:
            raise LabelerError(f"{at}: category {category_id} is not listed")
        category = review.category(names[category_id], at)
        if annotation.get("segmentation"):
            rle = segmentation_to_rle(annotation["segmentation"], image["height"], image["width"], where=at)
        else:
            rle = _box_rle(annotation.get("bbox"), image["height"], image["width"], at)
        reviewed[image["image_id"]].append(Instance(category, rle))
    return reviewed


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
    reference_classes: list[str] = field(default_factory=list)  # the classes reviewed.json holds

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
        missing = [name for name in self.figures_all if name not in self.reference_classes]
        if missing:
            lines.append("no reviewed instance of " + ", ".join(missing) + ": reviewed.json leaves them out; "
                         "build the next bank from it together with their first references")
        return "\n".join(lines)


def _check_same_run(selection: dict, manifest: dict, review_dir: str, pred: str) -> None:
    made_from, now = selection.get("out_id"), manifest.get("out_id")
    if made_from and now and made_from != now:
        raise LabelerError(f"--review {review_dir} was prepared on another run than --pred {pred} (run {made_from}, "
                           f"not {now}); merge it into the run it was made from")


def _reference_root(images: list[dict]) -> str | None:
    """The folder holding every reviewed image (a local folder, or a prefix of one store), or None."""
    uris = [image["uri"] for image in images]
    if not uris:
        return None
    if all(storage.is_local(uri) for uri in uris):
        paths = [os.path.normpath(uri.removeprefix("file://")) for uri in uris]
        return os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(
            [os.path.dirname(p) for p in paths])
    protocols = {uri.split("://", 1)[0] for uri in uris if "://" in uri}
    if len(protocols) != 1 or any("://" not in uri for uri in uris):
        return None
    return posixpath.commonpath([posixpath.dirname(uri) for uri in uris]) if len(uris) > 1 \
        else posixpath.dirname(uris[0])


def merge_review(pred: str, review_dir: str, labels: str, out_dir: str, *, val_fraction: float = 0.1,
                 seed: int = 0) -> MergeResult:
    """Merge the reviewers' export ``labels`` of the review in ``review_dir`` into a training set (module doc).

    Raises:
        LabelerError: bad options, an export that does not read or does not belong to this
            review and run, naming the task and region; nothing is written then.
    """
    if not (math.isfinite(val_fraction) and 0.0 <= val_fraction < 1.0):
        raise LabelerError("--val-fraction must be in [0, 1)")
    if seed < 0:
        raise LabelerError("--seed must be non-negative")
    folder = local_folder(out_dir)
    selection = read_selection(review_dir)
    manifest = read_manifest(pred)
    _check_same_run(selection, manifest, review_dir, pred)
    categories = run_categories(pred)
    review = _Review({image["image_id"]: image for image in selection["images"]},
                     {c.name: c.id for c in categories}, labels)
    label_filter: LabelFilter = label_filter_from_json(selection["label_filter"], categories)
    document = _read_export(labels)
    if isinstance(document, list):
        reviewed = _label_studio(document, review)
    elif isinstance(document, dict) and "images" in document:
        reviewed = _coco(document, review)
    else:
        raise LabelerError(f"--labels {labels}: neither a Label Studio JSON export (a list of tasks) nor a COCO file")
    result = _figures(pred, categories, label_filter, reviewed, review, folder)
    names = {c.id: c.name for c in categories}
    replaced = {image_id: [_detection(i, names[i.category_id]) for i in instances]
                for image_id, instances in reviewed.items()}
    reviewed_images = [review.chosen[image_id] for image_id in sorted(reviewed)]
    reference_root = _reference_root(reviewed_images)
    reference_categories = [c for c in categories if any(i.category_id == c.id for v in reviewed.values() for i in v)]
    result.reference_classes = [c.name for c in reference_categories]
    details = {"command": "review merge", "pred": pred, "review": review_dir, "labels": labels,
               "val_fraction": val_fraction, "seed": seed}
    with building(folder, "training-set", details) as staging:
        splits = write_coco_splits(
            pred, categories, staging / "annotations",
            lambda table, split: with_reviewed_labels(rows_of_split(table, split, val_fraction, seed), replaced),
            label_filter=label_filter, drop_empty=True, image_root=selection.get("source_root"),
            keep_ids=frozenset(replaced))
        result.images = sum(counts.images for counts in splits.values())
        result.instances = sum(counts.annotations for counts in splits.values())
        reviewed_ids = pa.array(list(replaced), pa.int64())

        def references(table: pa.Table) -> pa.Table:
            table = with_reviewed_labels(table.filter(pc.is_in(table.column("image_id"), value_set=reviewed_ids)),
                                         replaced)
            return _relative_to(table, reference_root)

        write_coco(pred, reference_categories, target=str(staging / "annotations" / "reviewed.json"),
                   with_scores=False, image_root=reference_root, transform=references)
        (staging / "report.json").write_text(json.dumps({
            "reviewed_images": result.reviewed_images,
            "random_share": {name: f.to_json() for name, f in result.figures_random.items()},
            "all_reviewed": {name: f.to_json() for name, f in result.figures_all.items()},
            "more_shots": result.more_shots,
            "reference_classes": result.reference_classes,
        }, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def _relative_to(table: pa.Table, root: str | None) -> pa.Table:
    """``table`` with each ``file_name`` made relative to ``root`` (the reviewed images' common folder)."""
    if root is None or not table.num_rows:
        return table
    uris = table.column("uri").to_pylist()
    if storage.is_local(root):
        names = [os.path.relpath(os.path.normpath(uri.removeprefix("file://")), root) for uri in uris]
    else:
        names = [uri[len(root.rstrip("/")) + 1:] for uri in uris]
    return table.set_column(table.schema.get_field_index("file_name"), "file_name", pa.array(names, pa.string()))


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
             review: _Review, folder: Path) -> MergeResult:
    names = {c.id: c.name for c in categories}
    random_share: dict[str, ClassFigures] = {c.name: ClassFigures() for c in categories}
    everything: dict[str, ClassFigures] = {c.name: ClassFigures() for c in categories}
    found: set[int] = set()
    for row in iter_label_rows(pred, ["image_id", "uri", "height", "width", "detections"]):
        if row["image_id"] not in reviewed:
            continue
        chosen = review.chosen[row["image_id"]]
        if row["uri"] != chosen["uri"] or (row["height"], row["width"]) != (chosen["height"], chosen["width"]):
            raise LabelerError(f"--pred {pred}: image {row['image_id']} is {row['uri']} there, but the review chose "
                               f"{chosen['uri']} under that id; merge the review into the run it was made from")
        found.add(row["image_id"])
        auto = [Instance(d["category_id"], detection_rle(row, d))
                for d in label_filter.kept(row["detections"])]
        for category_id, figures in compare(auto, reviewed[row["image_id"]]).items():
            everything[names[category_id]].add(figures)
            if chosen["share"] == "random":
                random_share[names[category_id]].add(figures)
    lost = sorted(set(reviewed) - found)
    if lost:
        raise LabelerError(f"--pred {pred}: holds no labels of the reviewed image {lost[0]} "
                           f"({review.chosen[lost[0]]['uri']}); merge the review into the run it was made from")
    ranked = sorted((f.f1, name) for name, f in everything.items() if f.f1 is not None and f.f1 < 1.0)
    return MergeResult(folder, 0, 0, len(reviewed), random_share, everything, [name for _, name in ranked])
