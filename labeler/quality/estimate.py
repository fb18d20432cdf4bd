"""``labeler estimate``: how good the labels will be, measured on the references before the big run.

k-fold over the reference images (docs/estimate.md): each fold is labelled by ``labeler run``'s own
code (:func:`labeler.run.driver.run_labeling`) with a bank built without it, then the pooled held-out
labels give COCOeval AP, per-class thresholds for a target precision
(:func:`labeler.quality.matching.choose_threshold`) and a confusion table. With negative references,
each fold's proposals are also rescored without them (:mod:`labeler.rescore`), and the report gives
each such class's AP with and without. OUT is built beside its
place and published whole (:mod:`labeler.io.published_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import check_class_names, read_coco
from labeler.io.published_folder import building, local_folder
from labeler.quality.estimate_config import EstimateConfig
from labeler.quality.evaluate import EvalReport, evaluate, load_ground_truth, load_predictions
from labeler.quality.matching import (
    BACKGROUND,
    MISSED,
    ThresholdChoice,
    choose_threshold,
    confusion_counts,
    match_image,
)

#: Threshold of a class the held-out images gave no detection of.
FALLBACK_THRESHOLD = 0.5


def fold_of_images(image_ids: list[int], folds: int, seed: int) -> dict[int, int]:
    """Image id -> fold, ``min(folds, images)`` folds of near-equal size, by a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(sorted(image_ids))
    count = min(folds, len(order))
    return {int(image_id): position % count for position, image_id in enumerate(order)}


def _fold_documents(document: dict, fold: dict[int, int], k: int, negatives: list[dict]) -> tuple[dict, dict]:
    """The training references of fold ``k`` (other folds' images, their classes, and the negative references
    of those classes on those images) and its held-out images."""
    held = {i for i, f in fold.items() if f == k}
    train_annotations = [a for a in document["annotations"] if a["image_id"] not in held]
    used = {a["category_id"] for a in train_annotations if not a.get("iscrowd")}
    train_annotations += [a for a in negatives if a["image_id"] not in held and a["category_id"] in used]
    train = {"images": [i for i in document["images"] if i["id"] not in held], "annotations": train_annotations,
             "categories": [c for c in document["categories"] if c["id"] in used]}
    heldout = {"images": [i for i in document["images"] if i["id"] in held],
               "annotations": [a for a in document["annotations"] if a["image_id"] in held],
               "categories": document["categories"]}
    return train, heldout


@dataclass
class EstimateResult:
    """What the estimate measured and where it wrote it."""

    folder: Path
    pooled: EvalReport
    per_fold: list[EvalReport]
    thresholds: dict[str, ThresholdChoice | None]
    confusion: dict[tuple[str, str], int]
    notes: list[str]
    iou_type: str
    without_negatives: EvalReport | None = None  # the same folds labelled without the negative references
    negative_classes: list[str] = dataclasses.field(default_factory=list)  # the classes that have some

    def negative_effect(self) -> dict[str, tuple[float, float]]:
        """Class -> (AP with, AP without) its negative references, for the classes that have some."""
        if self.without_negatives is None:
            return {}
        with_, without = self.pooled.per_class[self.iou_type], self.without_negatives.per_class[self.iou_type]
        return {name: (with_[name], without[name]) for name in self.negative_classes}

    def spread(self, metric: str = "AP") -> tuple[float, float, float]:
        """Mean, min and max of ``metric`` over the folds."""
        values = [f.metrics[self.iou_type][metric] for f in self.per_fold if f.metrics[self.iou_type][metric] >= 0]
        return (float(np.mean(values)), float(min(values)), float(max(values))) if values else (math.nan,) * 3


def run_estimate(config: EstimateConfig) -> EstimateResult:
    """Label every reference image with a bank built without it, and measure (module doc).

    Raises:
        LabelerError: bad settings, fewer than two reference images, or any error of
            ``build-bank`` or ``run`` on a fold.
    """
    if config.folds < 2:
        raise LabelerError("--folds must be at least 2")
    if not 0.0 < config.target_precision <= 1.0:
        raise LabelerError("--target-precision must be in (0, 1]")
    if config.seed < 0:
        raise LabelerError("--seed must be non-negative")
    folder = local_folder(config.out)
    dataset = read_coco(config.refs)
    check_class_names([dataset.categories[i] for i in sorted(dataset.categories)], config.refs)
    gt_document, notes = load_ground_truth(config.refs)  # without the negative references
    negatives = [raw for raw, annotation in zip(json.loads(storage.read_bytes(config.refs))["annotations"],
                                                dataset.annotations) if annotation.negative]
    image_ids = [image_id for image_id in dataset.images]
    if len(image_ids) < 2:
        raise LabelerError(f"{config.refs}: at least two reference images are needed to hold one out")
    fold = fold_of_images(image_ids, config.folds, config.seed)
    folds = max(fold.values()) + 1
    details = {"command": "estimate", "refs": config.refs, "folds": folds, "seed": config.seed}
    with building(folder, "estimate", details) as staging:
        result = _estimate(config, staging, gt_document, notes, fold, folds, negatives)
        _write_outputs(result, config)
    result.folder = folder
    return result


def _estimate(config: EstimateConfig, out: Path, gt_document: dict, notes: list[str], fold: dict[int, int],
              folds: int, negatives: list[dict]) -> EstimateResult:
    from labeler.bank.build import build_bank
    from labeler.rescore.config import RescoreConfig
    from labeler.rescore.driver import rescore_labeling
    from labeler.run.driver import run_labeling
    from labeler.run.pipeline import ray_session

    reports, pooled_images, pooled_annotations = [], [], []
    without_negatives: list[dict] = []  # detections of the folds relabelled without negatives
    with ray_session(config.run.address, config.run.sam2_actors + config.run.dinov2_actors,
                     quiet=not config.run.ray_logs):
        for k in range(folds):
            folder = out / "folds" / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            train, heldout = _fold_documents(gt_document, fold, k, negatives)
            (folder / "refs.json").write_text(json.dumps(train))
            (folder / "heldout.json").write_text(json.dumps(heldout))
            if not train["categories"]:
                notes.append(f"fold {k}: no reference annotation outside it, so no bank to label it with; its "
                             f"{len(heldout['images'])} images count as labelled with nothing")
                (folder / "predictions.json").write_text(json.dumps({"images": heldout["images"], "annotations": []}))
                reports.append(evaluate(str(folder / "predictions.json"), str(folder / "heldout.json")))
                pooled_images += heldout["images"]
                continue
            missing = sorted(c["name"] for c in gt_document["categories"]
                             if c not in train["categories"] and any(a["category_id"] == c["id"]
                                                                    for a in heldout["annotations"]))
            if missing:
                notes.append(f"fold {k}: no reference of {', '.join(missing)} outside it; its instances there "
                             "count as missed")
            bank = build_bank(str(folder / "refs.json"), config.images, dinov2=config.dinov2, sam2=config.run.sam2,
                              device=config.device)
            bank.save(str(folder / "bank.safetensors"))
            run_labeling(dataclasses.replace(
                config.run, bank=str(folder / "bank.safetensors"), images=str(folder / "heldout.json"),
                image_root=config.images, out=str(folder / "labels"), overwrite=True,
                keep_proposals="float32" if negatives else "off"))
            predictions = load_predictions(str(folder / "labels"))
            if negatives:  # the same proposals scored without the negatives: their effect, no model run again
                bank.without_negatives().save(str(folder / "bank-without-negatives.safetensors"))
                run = config.run
                rescore_labeling(RescoreConfig(
                    pred=str(folder / "labels"), bank=str(folder / "bank-without-negatives.safetensors"),
                    out=str(folder / "labels-without-negatives"), nms_thr=run.nms_thr, max_dets=run.max_dets,
                    merge=run.merge, diffusion_steps=run.diffusion_steps, diffusion_alpha=run.diffusion_alpha,
                    diffusion_lambda=run.diffusion_lambda, max_error_rate=1.0, address=run.address, overwrite=True,
                    ray_logs=run.ray_logs, storage_options=run.storage_options))
                without_negatives += load_predictions(str(folder / "labels-without-negatives"))["annotations"]
            reports.append(evaluate(str(folder / "labels"), str(folder / "heldout.json")))
            pooled_images += predictions.get("images", [])
            pooled_annotations += predictions["annotations"]
    for position, annotation in enumerate(pooled_annotations, start=1):
        annotation["id"] = position
    predictions_path = out / "predictions.json"
    predictions_path.write_text(json.dumps({"images": pooled_images, "annotations": pooled_annotations,
                                            "categories": gt_document["categories"]}))
    pooled = evaluate(str(predictions_path), config.refs)
    iou_type = "segm" if "segm" in pooled.metrics else "bbox"
    thresholds, confusion = _thresholds_and_confusion(gt_document, pooled_annotations, config.target_precision)
    result = EstimateResult(out, pooled, reports, thresholds, confusion, notes + pooled.notes, iou_type)
    if negatives:
        for position, annotation in enumerate(without_negatives, start=1):
            annotation["id"] = position
        path = out / "predictions-without-negatives.json"
        path.write_text(json.dumps({"images": pooled_images, "annotations": without_negatives,
                                    "categories": gt_document["categories"]}))
        result.without_negatives = evaluate(str(path), config.refs)
        names = {c["id"]: c["name"] for c in gt_document["categories"]}
        result.negative_classes = sorted({names[a["category_id"]] for a in negatives})
    return result


def _thresholds_and_confusion(document: dict, detections: list[dict], target: float
                              ) -> tuple[dict[str, ThresholdChoice | None], dict[tuple[str, str], int]]:
    names = {c["id"]: c["name"] for c in document["categories"]}
    images = {i["id"]: i for i in document["images"]}
    truths: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        if not annotation.get("iscrowd"):
            truths.setdefault(annotation["image_id"], []).append(annotation)
    by_image: dict[int, list[dict]] = {}
    for detection in detections:
        by_image.setdefault(detection["image_id"], []).append(detection)
    scores: dict[int, list[float]] = {c: [] for c in names}
    hits: dict[int, list[bool]] = {c: [] for c in names}
    for image_id, found in by_image.items():
        image = images[image_id]
        matched = match_image(found, truths.get(image_id, []), image["height"], image["width"])
        for detection, hit in zip(found, matched):
            scores[detection["category_id"]].append(detection["score"])
            hits[detection["category_id"]].append(bool(hit))
    counts = {c: sum(a["category_id"] == c for image in truths.values() for a in image) for c in names}
    chosen = {names[c]: choose_threshold(np.asarray(scores[c], dtype=np.float64), np.asarray(hits[c], dtype=bool),
                                         counts[c], target) for c in names}
    cut = {c: (chosen[names[c]].threshold if chosen[names[c]] else FALLBACK_THRESHOLD) for c in names}
    confusion: dict[tuple[str, str], int] = {}
    for image_id, image in images.items():
        kept = [d for d in by_image.get(image_id, []) if d["score"] >= cut[d["category_id"]]]
        for key, count in confusion_counts(kept, truths.get(image_id, []), image["height"], image["width"],
                                           names).items():
            confusion[key] = confusion.get(key, 0) + count
    return chosen, confusion


def thresholds_document(result: EstimateResult, target: float) -> dict[str, Any]:
    """The thresholds file: ``default`` and ``classes`` as ``--min-score`` reads them, and what each gives."""
    return {
        "default": FALLBACK_THRESHOLD,
        "classes": {name: round(choice.threshold, 6) for name, choice in result.thresholds.items() if choice},
        "target_precision": target,
        "measured": {name: (None if choice is None else {
            "precision": round(choice.precision, 4), "recall": round(choice.recall, 4), "reached": choice.reached})
            for name, choice in result.thresholds.items()},
    }


def describe(result: EstimateResult, target: float) -> str:
    """The short text of ``report.txt``."""
    metrics = result.pooled.metrics[result.iou_type]
    mean, low, high = result.spread("AP")
    per_class = result.pooled.per_class[result.iou_type]
    lines = [
        f"Labels estimated on {result.pooled.images['ground_truth']} reference images, each labelled by a bank "
        f"built without it ({len(result.per_fold)} folds), {result.iou_type}:",
        f"  AP {100 * metrics['AP']:.1f}, AP50 {100 * metrics['AP50']:.1f} "
        f"(AP per fold {100 * low:.1f} to {100 * high:.1f}, mean {100 * mean:.1f})",
        "  per class AP: " + ", ".join(f"{name} {100 * value:.1f}" if value >= 0 else f"{name} n/a"
                                       for name, value in sorted(per_class.items(), key=lambda kv: -kv[1])),
        f"Thresholds for precision {target:g} (file thresholds.json, for --min-score):",
    ]
    for name, choice in result.thresholds.items():
        if choice is None:
            lines.append(f"  {name}: no detection held out; default {FALLBACK_THRESHOLD:g}")
        elif choice.reached:
            lines.append(f"  {name} >= {choice.threshold:.3f}: precision {choice.precision:.2f}, "
                         f"recall {choice.recall:.2f}")
        elif choice.precision == 0:
            lines.append(f"  {name}: no held-out detection was right; >= {choice.threshold:.3f} keeps none: "
                         "add reference shots")
        else:
            lines.append(f"  {name}: precision {target:g} not reached; best {choice.precision:.2f} at >= "
                         f"{choice.threshold:.3f} (recall {choice.recall:.2f}): add reference shots")
    effect = result.negative_effect()
    if effect:
        lines.append("Negative references, AP per class with them -> without (the same proposals, rescored): "
                     + ", ".join(f"{name} {100 * max(a, 0):.1f} -> {100 * max(b, 0):.1f}"
                                 for name, (a, b) in effect.items()))
    confused = sorted(((count, truth, found) for (truth, found), count in result.confusion.items()
                       if truth != found and BACKGROUND not in (truth, found) and MISSED not in (truth, found)),
                      reverse=True)
    if confused:
        lines.append("Most confused (true -> labelled as): " + ", ".join(
            f"{truth} -> {found} {count}x" for count, truth, found in confused[:5]))
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _write_outputs(result: EstimateResult, config: EstimateConfig) -> None:
    out = result.folder
    (out / "thresholds.json").write_text(json.dumps(thresholds_document(result, config.target_precision), indent=2,
                                                    ensure_ascii=False))
    mean, low, high = result.spread("AP")
    (out / "report.json").write_text(json.dumps({
        "iou_type": result.iou_type,
        "pooled": result.pooled.to_json(),
        "folds": [{"images": r.images["ground_truth"], "metrics": r.metrics, "per_class_ap": r.per_class}
                  for r in result.per_fold],
        "ap_across_folds": {"mean": mean, "min": low, "max": high},
        "confusion": [{"true": truth, "labelled": found, "count": count}
                      for (truth, found), count in sorted(result.confusion.items())],
        "thresholds": thresholds_document(result, config.target_precision),
        "negatives": {name: {"ap_with": a, "ap_without": b} for name, (a, b) in result.negative_effect().items()},
        "notes": result.notes,
    }, indent=2, ensure_ascii=False, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    (out / "report.txt").write_text(describe(result, config.target_precision) + "\n", encoding="utf-8")
    _picture(result, out / "estimate.png")


def _picture(result: EstimateResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in result.pooled.categories]
    pooled = [max(result.pooled.per_class[result.iou_type][n], 0.0) for n in names]
    folds = np.array([[r.per_class[result.iou_type].get(n, math.nan) for n in names] for r in result.per_fold])
    folds[folds < 0] = np.nan
    low = np.clip(pooled - np.nanmin(folds, axis=0), 0, None) if folds.size else None
    high = np.clip(np.nanmax(folds, axis=0) - pooled, 0, None) if folds.size else None
    rows = names + [BACKGROUND]
    columns = names + [MISSED]
    table = np.array([[result.confusion.get((r, c), 0) for c in columns] for r in rows])
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    left.bar(names, pooled, yerr=None if low is None else np.nan_to_num(np.vstack([low, high])), color="#4477aa",
             capsize=4)
    left.set_ylim(0, 1)
    left.set_title(f"{result.iou_type} AP per class (bars: range over folds)")
    left.tick_params(axis="x", rotation=45)
    right.imshow(table, cmap="Blues")
    right.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    right.set_yticks(range(len(rows)), rows)
    right.set_xlabel("labelled as")
    right.set_ylabel("true class")
    right.set_title("kept detections vs references")
    for (i, j), value in np.ndenumerate(table):
        if value:
            right.text(j, i, str(value), ha="center", va="center",
                       color="white" if value > table.max() / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
