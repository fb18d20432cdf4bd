"""``labeler review``: hand the labels a person should check to Label Studio or CVAT.

For the images :mod:`labeler.review.selection` chooses, writes ``selection.json``, Label Studio tasks with
the kept detections as predictions and their labelling config, and a COCO 1.0 set for CVAT (docs/review.md);
``labeler review merge`` (:mod:`labeler.review.merge`) reads the reviewers' export back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.label_studio import labelling_config, prediction_regions
from labeler.io.labels import STATUS_OK, detection_rle
from labeler.io.published_folder import building, local_folder
from labeler.io.rle import decode_masks
from labeler.label_filter import parse_label_filter
from labeler.outdir.shards import iter_label_rows
from labeler.review.selection import DEFAULT_RANDOM_FRACTION, Chosen, choose_for_review
from labeler.run.manifest import read_manifest, run_categories
from labeler.visualize import category_colours

SELECTION_NAME = "selection.json"
SELECTION_FORMAT = "labeler-review/1"
LABEL_STUDIO_DIR = "label-studio"
CVAT_FILE = "cvat/annotations/instances_default.json"
#: Label Studio's URL for files under ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``.
LOCAL_FILES_URL = "/data/local-files/?d="


def image_url(uri: str, file_name: str, *, document_root: str | None, url_prefix: str | None) -> str:
    """Where Label Studio loads an image from.

    ``url_prefix`` + ``file_name`` when the images are served over HTTP (every
    image must then lie under the run's image root: its ``file_name`` a plain
    relative path); a remote URI as it is (``s3://``, ``gs://``: Label Studio
    signs them through a connected cloud storage; ``http(s)://``: loaded
    directly); a local file as Label Studio's local-files URL, relative to
    ``document_root`` (the folder ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
    names), both normalised first so that no ``..`` climbs out of it.

    Raises:
        LabelerError: an image outside the image root (``url_prefix``) or ``document_root``.
    """
    if url_prefix:
        parts = PurePosixPath(file_name).parts
        if not file_name or "://" in file_name or PurePosixPath(file_name).is_absolute() or ".." in parts:
            raise LabelerError(f"--url-prefix: image {uri} is not under the run's image root, so it has no "
                               "address below the prefix; use --document-root instead")
        return url_prefix.rstrip("/") + "/" + quote(PurePosixPath(*parts).as_posix())
    if not storage.is_local(uri):
        return uri
    path = os.path.normpath(uri.removeprefix("file://"))
    root = os.path.normpath(document_root or "/")
    relative = os.path.relpath(path, root)
    if relative == ".." or relative.startswith("../"):
        raise LabelerError(f"--document-root {root}: image {path} is not under it")
    return LOCAL_FILES_URL + quote(Path(relative).as_posix())


@dataclass
class ReviewResult:
    """What ``labeler review`` wrote."""

    folder: Path
    chosen: list[Chosen]
    tasks: Path
    config: Path
    cvat: Path
    predictions: int


def prepare_review(pred: str, out_dir: str, *, n: int, min_score: str | float | None = None, classes: str | None = None,
                   random_fraction: float = DEFAULT_RANDOM_FRACTION, seed: int = 0, document_root: str | None = None,
                   url_prefix: str | None = None) -> ReviewResult:
    """Choose ``n`` images of the run in ``pred`` and write them for review into ``out_dir`` (module doc).

    ``min_score``/``classes`` choose the predictions shown (:mod:`labeler.label_filter`;
    default threshold 0.5) and the threshold uncertainty is measured against.
    """
    if n < 1:
        raise LabelerError("--n must be at least 1")
    if not 0.0 <= random_fraction <= 1.0:
        raise LabelerError("--random-fraction must be in [0, 1]")
    if seed < 0:
        raise LabelerError("--seed must be non-negative")
    folder = local_folder(out_dir)
    manifest = read_manifest(pred)
    categories = run_categories(pred)
    label_filter = parse_label_filter(min_score, classes, categories, default=0.5)
    source_root = manifest.get("source_root")
    root = document_root or source_root
    chosen = choose_for_review(pred, n, label_filter, random_fraction=random_fraction, seed=seed)
    if not chosen:
        raise LabelerError(f"{pred}: no successfully labelled image to review")
    details = {"command": "review", "pred": pred, "n": n, "seed": seed}
    with building(folder, "review", details) as staging:
        written = _write_review(pred, staging, chosen, categories, label_filter, root=root, url_prefix=url_prefix)
        (staging / SELECTION_NAME).write_text(json.dumps({
            "format": SELECTION_FORMAT, "pred": pred, "out_id": manifest.get("out_id"), "n": n,
            "random_fraction": random_fraction, "seed": seed, "label_filter": label_filter.to_json(categories),
            "source_root": source_root, "images": [asdict(c) for c in chosen],
        }, indent=1, ensure_ascii=False), encoding="utf-8")
    return ReviewResult(folder, chosen, folder / LABEL_STUDIO_DIR / "tasks.json",
                        folder / LABEL_STUDIO_DIR / "config.xml", folder / CVAT_FILE, written)


def _write_review(pred: str, folder: Path, chosen: list[Chosen], categories: list, label_filter, *,
                  root: str | None, url_prefix: str | None) -> int:
    """``label-studio/`` and ``cvat/`` in ``folder`` for the ``chosen`` images; returns the predictions written."""
    (folder / LABEL_STUDIO_DIR).mkdir(parents=True, exist_ok=True)
    by_id = {c.image_id: c for c in chosen}
    names = {c.id: c.name for c in categories}
    tasks: dict[int, dict] = {}
    coco_images, coco_annotations = [], []
    for row in iter_label_rows(pred):
        if row["status"] != STATUS_OK or row["image_id"] not in by_id:
            continue
        kept = label_filter.kept(row["detections"])
        masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"]).astype(bool)
        regions = [region for d, mask in zip(kept, masks)
                   for region in prediction_regions(names[d["category_id"]], d["score"], mask, d["bbox"])]
        chosen_image = by_id[row["image_id"]]
        tasks[row["image_id"]] = {
            "data": {"image": image_url(row["uri"], row["file_name"], document_root=root, url_prefix=url_prefix),
                     "labeler_image_id": row["image_id"], "file_name": row["file_name"],
                     "review_share": chosen_image.share, "uncertainty": round(chosen_image.uncertainty, 4),
                     "uncertainty_reason": chosen_image.reason},
            "predictions": [{"model_version": "labeler", "score": round(chosen_image.uncertainty, 4),
                             "result": regions}],
        }
        coco_images.append({"id": row["image_id"], "file_name": row["file_name"], "width": row["width"],
                            "height": row["height"]})
        for d in kept:
            coco_annotations.append({
                "id": len(coco_annotations) + 1, "image_id": row["image_id"], "category_id": d["category_id"],
                "segmentation": detection_rle(row, d),
                "area": d["area"], "bbox": [round(v, 2) for v in d["bbox"]], "iscrowd": 1,
                "attributes": {"score": round(d["score"], 6)},
            })
    ordered = [tasks[c.image_id] for c in chosen]  # the random share first: a partial review stays unbiased
    (folder / LABEL_STUDIO_DIR / "tasks.json").write_text(json.dumps(ordered, ensure_ascii=False), encoding="utf-8")
    colours = category_colours(categories)
    (folder / LABEL_STUDIO_DIR / "config.xml").write_text(
        labelling_config([c.name for c in categories], [colours[c.id] for c in categories]), encoding="utf-8")
    cvat_path = folder / CVAT_FILE
    cvat_path.parent.mkdir(parents=True, exist_ok=True)
    cvat_path.write_text(json.dumps({
        "info": {"description": "labeler predictions for review", "image_root": root},
        "licenses": [], "categories": [{"id": c.id, "name": c.name, "supercategory": ""} for c in categories],
        "images": coco_images, "annotations": coco_annotations,
    }, ensure_ascii=False), encoding="utf-8")
    return len(coco_annotations)


def _selection_error(path: Path, what: str) -> LabelerError:
    return LabelerError(f"{path}: {what}; not a selection written by `labeler review` (run it again)")


def read_selection(review_dir: str) -> dict:
    """A review folder's ``selection.json``, checked."""
    path = Path(review_dir) / SELECTION_NAME
    if not path.is_file():
        raise LabelerError(f"{review_dir}: no {SELECTION_NAME}; not a folder written by `labeler review`")
    try:
        selection = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _selection_error(path, "not JSON") from None
    if not isinstance(selection, dict) or not isinstance(selection.get("label_filter"), dict) \
            or not isinstance(selection.get("images"), list):
        raise _selection_error(path, "no 'images' list or 'label_filter'")
    expected = {"image_id": int, "uri": str, "file_name": str, "width": int, "height": int, "share": str}
    for image in selection["images"]:
        if not isinstance(image, dict) or not all(
                isinstance(image.get(k), kind) and not isinstance(image.get(k), bool) for k, kind in expected.items()):
            raise _selection_error(path, f"an image entry {json.dumps(image)[:80]} lacks one of {', '.join(expected)}")
    if len({image["image_id"] for image in selection["images"]}) != len(selection["images"]):
        raise _selection_error(path, "an image is listed twice")
    return selection
