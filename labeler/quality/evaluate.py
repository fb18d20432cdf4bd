"""``labeler eval``: pycocotools COCOeval of a run's predictions against ground truth.

Images and categories are matched by id. Predictions for images the ground
truth does not have, and ground-truth images without predictions, are
counted and reported; the evaluation covers the images both have.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import CocoAnnotation, CocoDataset, check_bbox, check_segmentation, parse_coco
from labeler.io.masks import segmentation_to_mask
from labeler.outdir import layout as out_folder
from labeler.outdir.merged_coco import read_coco_shards
from labeler.outdir.shards import coco_dir, list_coco_shards

#: Names of ``COCOeval.stats`` entries reported, with their positions.
METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR@100": 8}
IOU_TYPES = ("bbox", "segm")


@dataclass
class EvalReport:
    """Metrics per IoU type, per-class AP, and how the two files matched."""

    metrics: dict[str, dict[str, float]]
    per_class: dict[str, dict[str, float]]
    categories: list[dict[str, Any]]
    images: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "per_class_ap": self.per_class, "categories": self.categories,
                "images": self.images, "notes": self.notes}

    def table(self) -> str:
        """A plain-text table of the metrics and per-class AP (percent)."""
        names = list(METRICS)
        lines = [f"{'':6}" + "".join(f"{n:>8}" for n in names)]
        for iou_type in self.metrics:
            lines.append(f"{iou_type:6}" + "".join(_percent(self.metrics[iou_type][n], 8) for n in names))
        lines += ["", f"{'class':24}" + "".join(f"{t + ' AP':>10}" for t in self.metrics)]
        for category in self.categories:
            key = category["name"]
            lines.append(f"{key[:24]:24}" + "".join(_percent(self.per_class[t][key], 10) for t in self.metrics))
        lines.append("")
        lines.append(
            f"images: {self.images['evaluated']} evaluated; {self.images['gt_without_prediction']} ground-truth "
            f"images without predictions, {self.images['prediction_without_gt']} predicted images not in the "
            "ground truth (both left out)"
        )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _percent(value: float, width: int) -> str:
    """COCOeval's -1 (no ground truth in that range) and NaN print as n/a."""
    return f"{'n/a':>{width}}" if not value >= 0 else f"{100 * value:{width}.1f}"


def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as error:
        raise LabelerError(f"{uri}: malformed JSON: {error}") from None


def load_predictions(pred: str) -> dict[str, Any]:
    """A run's predictions, given the run folder (its ``coco.json``, or its COCO
    shards when the run wrote no merged file) or a COCO predictions file; every
    detection is checked (ids, a finite score, a box and an RLE or polygon mask)."""
    if pred.lower().endswith(".json"):
        uri, document = pred, _read_json(pred)
    elif storage.exists(out_folder.join(pred, out_folder.COCO_NAME)):
        uri = out_folder.join(pred, out_folder.COCO_NAME)
        document = _read_json(uri)
    elif list_coco_shards(pred):
        uri, document = coco_dir(pred) + "/", read_coco_shards(pred)
    else:
        raise LabelerError(f"{pred}: no coco.json and no COCO shards under coco/; not a labeler run folder")
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        raise LabelerError(f"{uri}: not a COCO predictions file (no 'annotations' list)")
    for position, detection in enumerate(document["annotations"]):
        where = f"{uri}: annotations[{position}]"
        for key in ("image_id", "category_id"):
            if not isinstance(detection, dict) or isinstance(detection.get(key), bool) \
                    or not isinstance(detection.get(key), int):
                raise LabelerError(f"{where}: '{key}' must be an integer")
        score = detection.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise LabelerError(f"{where}: 'score' must be a finite number, got {score!r:.40}")
        check_bbox(detection.get("bbox"), where)
        if detection.get("segmentation") is not None:
            check_segmentation(detection["segmentation"], where)
    return document


def load_ground_truth(gt_path: str) -> tuple[dict[str, Any], list[str]]:
    """The ground-truth document, checked field by field (:func:`parse_coco`), as pycocotools takes it.

    A missing ``area`` is the mask's (or the box's) area and a missing
    ``iscrowd`` is 0, as COCO defines them; negative references (what a class
    is not) are left out. Returns the document and notes on what was filled
    in, left out or cannot be evaluated.
    """
    document = _read_json(gt_path)
    dataset = parse_coco(document, gt_path)
    notes = []
    annotations = []
    negatives = sum(annotation.negative for annotation in dataset.annotations)
    if negatives:
        notes.append(f"{negatives} negative references (\"negative\": true) are not objects to find: left out of "
                     "the ground truth")
    for raw, annotation in zip(document.get("annotations", []), dataset.annotations):
        if annotation.negative:
            continue
        entry = dict(raw, bbox=list(annotation.bbox), iscrowd=int(annotation.iscrowd))
        if annotation.area is None:
            entry["area"] = _area(dataset, annotation, gt_path)
        annotations.append(entry)
    filled = sum(annotation.area is None for annotation in dataset.annotations)
    if filled:
        notes.append(f"{filled} ground-truth annotations had no 'area'; their mask (or box) area was used")
    return dict(document, annotations=annotations), notes


def _area(dataset: CocoDataset, annotation: CocoAnnotation, source: str) -> float:
    if annotation.segmentation is None:
        return annotation.bbox[2] * annotation.bbox[3]
    image = dataset.images[annotation.image_id]
    if not (image.width and image.height):
        raise LabelerError(f"{source}: image {image.id} needs 'width' and 'height' to measure annotation "
                           f"{annotation.id}'s area")
    where = f"{source}: annotation {annotation.id}"
    return float(segmentation_to_mask(annotation.segmentation, image.height, image.width, where=where).sum())


def select_categories(gt: COCO, wanted: str | None) -> list[int]:
    """Category ids from ``1,3`` or ``boat,bird`` (names of the ground truth), or all."""
    all_ids = sorted(gt.getCatIds())
    if not wanted:
        return all_ids
    by_name = {c["name"]: c["id"] for c in gt.loadCats(all_ids)}
    chosen = []
    for item in (part.strip() for part in wanted.split(",") if part.strip()):
        if item.lstrip("-").isdigit() and int(item) in all_ids:
            chosen.append(int(item))
        elif item in by_name:
            chosen.append(by_name[item])
        else:
            raise LabelerError(f"--categories: {item!r} is neither a category id nor a name of the ground truth")
    return sorted(set(chosen))


def _results(gt: COCO, annotations: list[dict]) -> COCO:
    """``gt.loadRes`` of a copy of the annotations; an empty result set when there are none."""
    if annotations:
        return gt.loadRes(copy.deepcopy(annotations))
    empty = COCO()
    empty.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    empty.createIndex()
    return empty


def _segm_blocker(gt_document: dict[str, Any], predictions: list[dict]) -> str | None:
    """Why masks cannot be compared, or None: box-only ground truth or predictions, or
    polygons on images without a size."""
    sized = {i["id"] for i in gt_document["images"] if i.get("width") and i.get("height")}
    for annotation in gt_document["annotations"]:
        if not annotation.get("segmentation"):
            return f"ground-truth annotation {annotation['id']} has no segmentation (box only)"
        if isinstance(annotation["segmentation"], list) and annotation["image_id"] not in sized:
            return f"ground-truth image {annotation['image_id']} has polygons but no width and height"
    if any(not p.get("segmentation") for p in predictions):
        return "some predictions have no segmentation (box only)"
    return None


def _per_class_ap(evaluator: COCOeval) -> list[float]:
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # all areas, maxDets=100
    values = []
    for k in range(precision.shape[2]):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        values.append(float(valid.mean()) if valid.size else float("nan"))
    return values


def evaluate(pred: str, gt_path: str, categories: str | None = None) -> EvalReport:
    """COCOeval ``bbox`` and ``segm`` of the predictions in ``pred`` against ``gt_path``.

    Raises:
        LabelerError: unreadable files, or categories not in the ground truth.
    """
    gt_document, notes = load_ground_truth(gt_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_document
        gt.createIndex()
    predictions = load_predictions(pred)
    gt_images = set(gt.getImgIds())
    predicted_images = {image["id"] for image in predictions.get("images", [])}
    predicted_images |= {a["image_id"] for a in predictions["annotations"]}
    evaluated = sorted(gt_images & predicted_images)
    gt_categories = set(gt.getCatIds())
    unknown = sorted({a["category_id"] for a in predictions["annotations"]} - gt_categories)
    if unknown:
        notes.append(f"predicted category ids {unknown} are not in the ground truth; they are not evaluated")
    if not evaluated:
        raise LabelerError(f"{pred} and {gt_path} share no image id: nothing to evaluate")
    category_ids = select_categories(gt, categories)
    kept = [a for a in predictions["annotations"] if a["image_id"] in gt_images]

    metrics: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, float]] = {}
    names = [c["name"] for c in gt.loadCats(category_ids)]
    iou_types = list(IOU_TYPES)
    unmasked = _segm_blocker(gt_document, kept)
    if unmasked:
        iou_types.remove("segm")
        notes.append(f"segm not evaluated: {unmasked}")
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            detections = _results(gt, kept)
            evaluator = COCOeval(gt, detections, iou_type)
            evaluator.params.imgIds = evaluated
            evaluator.params.catIds = category_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(evaluator.stats[i]) for name, i in METRICS.items()}
        per_class[iou_type] = dict(zip(names, _per_class_ap(evaluator)))
    return EvalReport(
        metrics=metrics,
        per_class=per_class,
        categories=[{"id": i, "name": n} for i, n in zip(category_ids, names)],
        images={
            "ground_truth": len(gt_images),
            "predicted": len(predicted_images),
            "evaluated": len(evaluated),
            "gt_without_prediction": len(gt_images - predicted_images),
            "prediction_without_gt": len(predicted_images - gt_images),
        },
        notes=notes,
    )
