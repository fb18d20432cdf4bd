"""``labeler export``: training sets from a run's labels, streaming over its shards.

Formats (docs/formats.md, "Exports"): ``coco`` (``annotations/instances_{train,val}.json``, RLE, no
scores), ``yolo`` (Ultralytics' segmentation layout: a mask's outer contours traced with OpenCV,
simplified to ``--simplify`` pixels, parts joined by zero-width bridges as Ultralytics does, holes
filled) and ``semantic`` (one class-index PNG per image). Every format keeps what ``--min-score`` and
``--classes`` keep and leaves out images left without a detection unless ``--keep-empty``; the
train/val split is seeded and decided per image id (:func:`split_of`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pyarrow as pa
import yaml
from PIL import Image, ImageDraw

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category
from labeler.io.coco_writer import CocoCounts
from labeler.io.labels import STATUS_OK
from labeler.io.published_folder import building, check_apart, check_source_image_outside, local_folder
from labeler.io.rle import decode_masks
from labeler.label_filter import LabelFilter, parse_label_filter
from labeler.outdir.merged_coco import write_coco
from labeler.outdir.shards import iter_label_rows
from labeler.run.manifest import read_manifest, run_categories
from labeler.visualize import category_colours


@dataclass
class ExportResult:
    """What an export wrote."""

    folder: Path
    images: int = 0
    instances: int = 0
    images_left_out: int = 0  # ok images without a kept detection (kept only with keep_empty)
    splits: dict[str, int] = field(default_factory=dict)  # images per split

    def count(self, split: str, instances: int) -> None:
        self.images += 1
        self.instances += instances
        self.splits[split] = self.splits.get(split, 0) + 1


def _bridge(polygon: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Join ``part`` into ``polygon`` through their closest points, there and back."""
    distances = ((polygon[:, None, :] - part[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    rotated = np.roll(part, -j, axis=0)
    return np.concatenate([polygon[: i + 1], rotated, rotated[:1], polygon[i:]])


def mask_to_polygon(mask: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """One polygon ``[N, 2]`` (x, y pixel coordinates) covering every part of a mask, holes filled.

    With ``tolerance > 0`` each part's outline is simplified (Douglas-Peucker,
    ``cv2.approxPolyDP``): no point of the outline moves more than
    ``tolerance`` pixels away from the polygon.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if tolerance > 0:
        contours = [cv2.approxPolyDP(c, tolerance, True) if len(c) > 3 else c for c in contours]
    parts = sorted((c[:, 0, :].astype(np.float64) for c in contours if len(c) >= 1), key=len, reverse=True)
    if not parts:
        return np.zeros((0, 2))
    polygon = parts[0]
    for part in parts[1:]:
        polygon = _bridge(polygon, part)
    return polygon


#: ``--images``: how an export holds its images.
IMAGE_MODES = ("copy", "link", "none")
#: ``--simplify`` default: polygon vertices may move this many pixels (docs/formats.md has its IoU effect).
DEFAULT_SIMPLIFY = 1.0
DEFAULT_VAL_FRACTION = 0.1
SPLITS = ("train", "val")


def split_of(image_id: int, val_fraction: float, seed: int) -> str:
    """``val`` for a share ``val_fraction`` of the images, chosen by a hash of ``seed`` and
    the image id: the same image falls in the same split on every export, of any size."""
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


def rows_of_split(table: pa.Table, split: str, val_fraction: float, seed: int) -> pa.Table:
    """The rows of ``table`` whose image falls in ``split`` (:func:`split_of`)."""
    ids = table.column("image_id").to_pylist()
    return table.filter(pa.array([split_of(i, val_fraction, seed) == split for i in ids], pa.bool_()))


def export_name(row: dict) -> str:
    """Where an image goes inside an export: its ``file_name`` when that is a plain
    relative path (sub-folders kept), else ``<image_id>_<base name>``."""
    name = row.get("file_name") or ""
    parts = PurePosixPath(name).parts
    if name and "://" not in name and not PurePosixPath(name).is_absolute() and ".." not in parts and "\\" not in name:
        return PurePosixPath(*parts).as_posix()
    return f"{row['image_id']}_{_base_name(row)}"


def _base_name(row: dict) -> str:
    return PurePosixPath(row["uri"].split("?")[0]).name or "image"


#: Names tried for one image before an export gives up.
NAME_ATTEMPTS = 1 << 12


def _candidate_names(row: dict) -> Iterator[str]:
    """:func:`export_name`, then names made unique by the image id (for names another image took)."""
    yield export_name(row)
    yield f"{row['image_id']}_{_base_name(row)}"
    for attempt in range(1, NAME_ATTEMPTS):
        yield f"{row['image_id']}_{attempt}_{_base_name(row)}"


def _create_exclusively(path: Path) -> bool:
    """Create ``path`` empty; False when it exists (another image of this export took the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def claim_name(row: dict, folder: Path, companion: Callable[[str], Path] | None = None) -> str:
    """The first of :func:`_candidate_names` that no other image of this export holds, claimed by
    creating ``folder/name`` (and ``companion(name)``, a YOLO label file) exclusively. The check is
    the file system's own: ``twin.jpg`` and ``twin.png`` would share one YOLO label, and names
    equal but for case share one file on a case-insensitive disk."""
    for name in _candidate_names(row):
        extra = companion(name) if companion else None
        if extra is not None and not _create_exclusively(extra):
            continue
        if _create_exclusively(folder / name):
            return name
        if extra is not None:
            extra.unlink()
    raise LabelerError(f"image {row['image_id']} ({row['uri']}): no free name for it in the export")


def place_image(uri: str, target: Path, mode: str) -> None:
    """Put the image at ``uri`` at ``target`` (claimed by :func:`claim_name`, so a file of this
    export, empty): a copy, or a relative symbolic link (local images only)."""
    local = storage.is_local(uri)
    if mode == "link":
        if not local:
            raise LabelerError(f"--images link: {uri} is not a local file; use --images copy")
        target.unlink()
        os.symlink(os.path.relpath(os.path.abspath(uri.removeprefix("file://")), target.parent), target)
    elif local:
        shutil.copyfile(uri.removeprefix("file://"), target)
    else:
        target.write_bytes(storage.read_bytes(uri))


@dataclass(frozen=True)
class ExportOptions:
    """What every format shares: which detections and images go in, and how images are held."""

    label_filter: LabelFilter
    folder: Path  # where the export is published (no source image may lie inside it)
    category_ids: frozenset[int]  # the run's classes
    keep_empty: bool = False  # keep images without a kept detection (as background)
    images: str = "none"
    val_fraction: float = 0.0
    seed: int = 0
    simplify: float = DEFAULT_SIMPLIFY


def _exported_rows(pred: str, options: ExportOptions, result: ExportResult) -> Iterator[tuple[dict, list[dict]]]:
    """The ok rows that go into the export with their kept detections; counts those left out."""
    for row in iter_label_rows(pred):
        if row["status"] != STATUS_OK:
            continue
        check_source_image_outside(row["uri"], options.folder)
        kept = options.label_filter.kept(row["detections"])
        unknown = {d["category_id"] for d in kept} - options.category_ids
        if unknown:
            raise LabelerError(f"{pred}: image {row['image_id']} has detections of category {min(unknown)}, which "
                               "its run.json does not list; rerun the same `labeler run` command to write it anew")
        if not kept and not options.keep_empty:
            result.images_left_out += 1
            continue
        yield row, kept


def _polygon_lines(row: dict, kept: list[dict], index: dict[int, int], simplify: float) -> list[str]:
    masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"])
    lines = []
    for detection, mask in zip(kept, masks):
        polygon = mask_to_polygon(mask, simplify)
        if len(polygon) < 3:
            continue
        normalised = polygon / np.array([row["width"], row["height"]], dtype=np.float64)
        coordinates = " ".join(f"{v:.6f}" for v in normalised.clip(0.0, 1.0).flatten())
        lines.append(f"{index[detection['category_id']]} {coordinates}")
    return lines


def export_yolo(pred: str, folder: Path, categories: list[Category], options: ExportOptions) -> ExportResult:
    """Ultralytics' segmentation layout (module doc), split into ``train``/``val``, written into ``folder``."""
    index = {category.id: position for position, category in enumerate(categories)}
    result = ExportResult(options.folder)
    for row, kept in _exported_rows(pred, options, result):
        lines = _polygon_lines(row, kept, index, options.simplify)
        if not lines and not options.keep_empty:  # every kept mask too thin for a polygon
            result.images_left_out += 1
            continue
        split = split_of(row["image_id"], options.val_fraction, options.seed)
        images, labels = folder / "images" / split, folder / "labels" / split
        name = claim_name(row, images, companion=lambda name: (labels / name).with_suffix(".txt"))
        place_image(row["uri"], images / name, options.images)
        (labels / name).with_suffix(".txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        result.count(split, len(lines))
    splits = {split: f"images/{split}" for split in SPLITS if result.splits.get(split)}
    data = {"train": splits.get("train", "images/val"), "val": splits.get("val", splits.get("train", "images/train")),
            "names": {position: c.name for position, c in enumerate(categories)}}
    (folder / "data.yaml").write_text(
        f"# labeler export ({options.label_filter.describe(categories)}); Ultralytics segmentation dataset.\n"
        "# No `path`: Ultralytics resolves train and val against this file's folder, so the set can be moved.\n"
        + yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return result


def export_semantic(pred: str, folder: Path, categories: list[Category], options: ExportOptions) -> ExportResult:
    """One class-index PNG per image (module doc), written into ``folder``; no split."""
    index = {category.id: position + 1 for position, category in enumerate(categories)}
    dtype = np.uint8 if len(categories) < 256 else np.uint16
    colours = category_colours(categories)
    palette = [0, 0, 0] + [v for c in categories for v in colours[c.id]]
    result = ExportResult(options.folder)
    for row, kept in _exported_rows(pred, options, result):
        kept = sorted(kept, key=lambda d: d["score"])  # highest score painted last
        masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"]).astype(bool)
        classes = np.zeros((row["height"], row["width"]), dtype=dtype)
        for detection, mask in zip(kept, masks):
            classes[mask] = index[detection["category_id"]]
        image = Image.fromarray(classes)
        if dtype == np.uint8:
            image = image.convert("P")
            image.putpalette(palette)
        image.save(folder / f"{row['image_id']}.png")
        result.count("train", len(kept))
    legend = {"0": {"category_id": None, "name": "background", "colour": [0, 0, 0]}}
    legend.update({str(index[c.id]): {"category_id": c.id, "name": c.name, "colour": list(colours[c.id])}
                   for c in categories})
    (folder / "legend.json").write_text(json.dumps(legend, indent=2, ensure_ascii=False), encoding="utf-8")
    _legend_picture(legend, folder / "legend.png")
    return result


def _legend_picture(legend: dict, path: Path) -> None:
    picture = Image.new("RGB", (260, 22 * len(legend) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for row, (value, entry) in enumerate(legend.items()):
        top = 4 + 22 * row
        draw.rectangle([4, top, 22, top + 16], fill=tuple(entry["colour"]), outline=(0, 0, 0))
        draw.text((30, top + 3), f"{value}: {entry['name']}", fill=(0, 0, 0))
    picture.save(path)


def write_coco_splits(pred: str, categories: list[Category], folder: Path, split_rows: Callable[[pa.Table, str], pa.Table],
                      *, label_filter: LabelFilter | None, drop_empty: bool, image_root: str | None,
                      keep_ids: frozenset[int] = frozenset()) -> dict[str, CocoCounts]:
    """``folder/instances_<split>.json`` of a training set (no scores), each from ``split_rows(table, split)`` of
    the run's shards; an empty ``val`` split is not written. Returns each split's counts."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        target = folder / f"instances_{split}.json"
        written[split] = write_coco(pred, categories, target=str(target), label_filter=label_filter,
                                    with_scores=False, drop_empty=drop_empty, keep_ids=keep_ids,
                                    image_root=image_root, transform=lambda table, split=split: split_rows(table, split))
        if not written[split].images and split == "val":
            target.unlink()
    return written


def export_coco(pred: str, folder: Path, categories: list[Category], options: ExportOptions) -> ExportResult:
    """``annotations/instances_<split>.json`` (no scores) in ``folder``; with ``--images copy`` or
    ``link`` the images under ``images/`` and each ``file_name`` relative to it, else each
    ``file_name`` relative to the run's source root (``info.image_root``)."""
    result = ExportResult(options.folder)
    renamed: dict[int, str] = {}  # images whose name another image of the export took first
    if options.images != "none":
        for row, _ in _exported_rows(pred, options, ExportResult(folder)):  # the documents count what is left out
            name = claim_name(row, folder / "images")
            place_image(row["uri"], folder / "images" / name, options.images)
            if name != export_name(row):
                renamed[row["image_id"]] = name
    image_root = str(options.folder / "images") if options.images != "none" else read_manifest(pred).get("source_root")

    def pick(table: pa.Table, split: str) -> pa.Table:
        table = rows_of_split(table, split, options.val_fraction, options.seed)
        if options.images == "none":
            return table
        names = [renamed.get(row["image_id"]) or export_name(row)
                 for row in table.select(["image_id", "uri", "file_name"]).to_pylist()]
        return table.set_column(table.schema.get_field_index("file_name"), "file_name", pa.array(names, pa.string()))

    splits = write_coco_splits(pred, categories, folder / "annotations", pick, label_filter=options.label_filter,
                               drop_empty=not options.keep_empty, image_root=image_root)
    for split, counts in splits.items():
        result.images_left_out += counts.images_left_out
        if counts.images or split != "val":
            result.splits[split] = counts.images
        result.instances += counts.annotations
        result.images += counts.images
    return result


#: ``--format`` -> the writer of that training set.
_WRITERS = {"coco": export_coco, "yolo": export_yolo, "semantic": export_semantic}
#: ``--simplify`` above this many pixels is refused (OpenCV's limit is far above any useful tolerance).
MAX_SIMPLIFY = 1000.0


def export(pred: str, fmt: str, out_dir: str, *, min_score: str | float | None = None, classes: str | None = None,
           images: str | None = None, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
           keep_empty: bool = False, simplify: float = DEFAULT_SIMPLIFY) -> ExportResult:
    """Export the labels of the run in ``pred`` as ``fmt`` into the local folder ``out_dir``.

    ``min_score`` and ``classes`` choose the detections (:mod:`labeler.label_filter`);
    ok images left without one are left out unless ``keep_empty``. ``images``
    is ``copy``, ``link`` (relative links) or ``none``; by default ``copy`` for
    ``yolo`` and ``none`` otherwise. ``val_fraction`` of the images go to the
    ``val`` split (``coco`` and ``yolo``), chosen by ``seed``. ``simplify`` is the
    YOLO polygons' tolerance in pixels (0 keeps every contour vertex).

    The set is built beside ``out_dir`` and published whole (:mod:`labeler.io.published_folder`):
    a previous export there is replaced at once, never mixed with this one, and
    an ``out_dir`` that holds anything else, or that overlaps the run's images, is
    refused before any work.
    """
    if fmt not in _WRITERS:
        raise LabelerError(f"--format must be one of {', '.join(_WRITERS)}, got {fmt!r}")
    images = images or ("copy" if fmt == "yolo" else "none")
    checks = [
        (images in IMAGE_MODES, f"--images must be one of {', '.join(IMAGE_MODES)}"),
        (fmt != "yolo" or images != "none",
         "--images none: a YOLO set needs its images beside its labels; use copy or link"),
        (0.0 <= val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
        (0.0 <= simplify <= MAX_SIMPLIFY, f"--simplify must be a number of pixels in [0, {MAX_SIMPLIFY:g}]"),
        (seed >= 0, "--seed must be non-negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise LabelerError(message)
    folder = local_folder(out_dir)
    manifest = read_manifest(pred)
    categories = run_categories(pred)
    check_apart(folder, manifest.get("source_root"))
    options = ExportOptions(parse_label_filter(min_score, classes, categories), folder,
                            frozenset(c.id for c in categories), keep_empty, images, val_fraction, seed, simplify)
    details = {"command": "export", "export_format": fmt, "pred": os.path.abspath(pred) if storage.is_local(pred) else pred,
               "run": manifest.get("out_id"), "filter": options.label_filter.to_json(categories), "images": images,
               "val_fraction": val_fraction, "seed": seed, "keep_empty": keep_empty}
    with building(folder, "export", details) as staging:
        return _WRITERS[fmt](pred, staging, categories, options)
