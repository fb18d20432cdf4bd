"""``labeler visualize``: overlay pictures of a run's labels, a contact sheet and a summary plot."""

from __future__ import annotations

import colorsys
import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from labeler.errors import LabelerError  # noqa: E402
from labeler.io.coco import Category, CocoAnnotation, read_coco  # noqa: E402
from labeler.io.images import read_image  # noqa: E402
from labeler.io.labels import STATUS_OK  # noqa: E402
from labeler.io.masks import segmentation_to_mask  # noqa: E402
from labeler.io.published_folder import building, check_apart, local_folder  # noqa: E402
from labeler.io.rle import decode_masks  # noqa: E402
from labeler.label_filter import LabelFilter, parse_label_filter  # noqa: E402
from labeler.outdir.shards import iter_label_rows
from labeler.run.manifest import read_manifest, run_categories  # noqa: E402

MASK_ALPHA = 0.45


def category_colours(categories: list[Category]) -> dict[int, tuple[int, int, int]]:
    """A distinct, stable colour per category (evenly spaced hues)."""
    colours = {}
    for position, category in enumerate(categories):
        hue = (position * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours[category.id] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


@dataclass(frozen=True)
class Overlay:
    """One instance to draw."""

    category_id: int
    mask: np.ndarray  # [H, W] bool
    box: tuple[float, float, float, float]  # x, y, w, h
    caption: str


def draw_overlays(pixels: np.ndarray, overlays: list[Overlay], colours: dict[int, tuple[int, int, int]]) -> Image.Image:
    """Filled masks, box outlines and captions over an ``[H, W, 3]`` image."""
    canvas = pixels.astype(np.float32)
    for overlay in overlays:
        colour = np.array(colours.get(overlay.category_id, (255, 255, 255)), dtype=np.float32)
        canvas[overlay.mask] = (1 - MASK_ALPHA) * canvas[overlay.mask] + MASK_ALPHA * colour
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for overlay in overlays:
        colour = colours.get(overlay.category_id, (255, 255, 255))
        x, y, w, h = overlay.box
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=2)
        text_box = draw.textbbox((x + 2, y + 1), overlay.caption)
        draw.rectangle(text_box, fill=(0, 0, 0))
        draw.text((x + 2, y + 1), overlay.caption, fill=colour)
    return image


def _titled(image: Image.Image, title: str) -> Image.Image:
    framed = Image.new("RGB", (image.width, image.height + 16), (0, 0, 0))
    framed.paste(image, (0, 16))
    ImageDraw.Draw(framed).text((4, 2), title, fill=(255, 255, 255))
    return framed


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    joined = Image.new("RGB", (left.width + right.width + 4, max(left.height, right.height)), (255, 255, 255))
    joined.paste(left, (0, 0))
    joined.paste(right, (left.width + 4, 0))
    return joined


def _prediction_overlays(row: dict, names: dict[int, str], label_filter: LabelFilter) -> list[Overlay]:
    kept = label_filter.kept(row["detections"])
    masks = decode_masks([d["rle"] for d in kept], row["height"], row["width"]).astype(bool)
    return [
        Overlay(d["category_id"], mask, tuple(d["bbox"]), f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}")
        for d, mask in zip(kept, masks)
    ]


def _ground_truth_overlays(annotations: list[CocoAnnotation], height: int, width: int, names: dict[int, str],
                           source: str) -> list[Overlay]:
    overlays = []
    for annotation in annotations:
        if annotation.segmentation:
            mask = segmentation_to_mask(annotation.segmentation, height, width,
                                        where=f"--gt {source}: annotation {annotation.id}")
        else:
            mask = np.zeros((height, width), dtype=np.uint8)
        name = names.get(annotation.category_id, str(annotation.category_id))
        overlays.append(Overlay(annotation.category_id, mask.astype(bool), annotation.bbox, name))
    return overlays


@dataclass
class VisualizeResult:
    pictures: list[Path]
    index: Path
    summary: Path
    errors: int = 0  # error images of the run, listed in index.html


#: Error images listed by name in index.html (the rest are counted).
ERRORS_LISTED = 100


def _summary_plot(counts: Counter, scores: list[float], categories: list[Category], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [c.name for c in categories]
    left.bar(names, [counts.get(c.id, 0) for c in categories],
             color=[np.array(c) / 255 for c in category_colours(categories).values()])
    left.set_title("detections per class")
    left.tick_params(axis="x", rotation=45)
    right.hist(scores, bins=20, range=(0.0, 1.0), color="#4477aa")
    right.set_title(f"score histogram ({len(scores)} detections)")
    right.set_xlabel("score")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def visualize(pred: str, out_dir: str, *, n: int = 32, min_score: str | float | None = 0.5,
              classes: str | None = None, gt: str | None = None, seed: int = 0) -> VisualizeResult:
    """Draw ``n`` sampled labelled images of the run in ``pred`` into ``out_dir``.

    Writes ``<image_id>.png`` per sampled image (ground truth beside it with
    ``gt``), ``index.html`` (the pictures, then the error images with their
    reasons) and ``summary.png`` (detections per class and the score
    histogram over all detections). ``min_score`` and ``classes`` choose the
    detections drawn (:mod:`labeler.label_filter`).
    """
    if n < 1:
        raise LabelerError("--n must be at least 1")
    if seed < 0:
        raise LabelerError("--seed must be non-negative")
    folder = local_folder(out_dir)
    check_apart(folder, read_manifest(pred).get("source_root"))
    categories = run_categories(pred)
    label_filter = parse_label_filter(min_score, classes, categories, default=0.5)
    names = {c.id: c.name for c in categories}
    colours = category_colours(categories)
    gt_annotations: dict[int, list[CocoAnnotation]] | None = None
    if gt is not None:
        truth = read_coco(gt)  # checked field by field before any picture is drawn
        gt_annotations = {}
        for annotation in truth.annotations:
            gt_annotations.setdefault(annotation.image_id, []).append(annotation)
        names = {**{c.id: c.name for c in truth.categories.values()}, **names}
    counts: Counter = Counter()
    scores: list[float] = []
    ok_ids: list[int] = []
    failed: list[tuple[int, str, str]] = []
    errors = 0
    for row in iter_label_rows(pred, ["image_id", "uri", "status", "error", "detections"]):
        if row["status"] != STATUS_OK:
            errors += 1
            if len(failed) < ERRORS_LISTED:
                failed.append((row["image_id"], row["uri"], row["error"] or ""))
            continue
        ok_ids.append(row["image_id"])
        for detection in row["detections"]:
            counts[detection["category_id"]] += 1
            scores.append(detection["score"])
    if not ok_ids:
        raise LabelerError(f"{pred}: no successfully labelled image to draw")
    chosen = set(np.random.default_rng(seed).choice(sorted(ok_ids), size=min(n, len(ok_ids)), replace=False).tolist())
    details = {"command": "visualize", "pred": pred, "n": n, "seed": seed, "filter": label_filter.to_json(categories)}
    with building(folder, "pictures", details) as staging:
        pictures, cards = [], []
        for row in iter_label_rows(pred):
            if row["image_id"] not in chosen:
                continue
            pixels = read_image(row["uri"])
            overlays = _prediction_overlays(row, names, label_filter)
            picture = _titled(draw_overlays(pixels, overlays, colours),
                              f"prediction ({label_filter.describe(categories)})")
            if gt_annotations is not None:
                truth_overlays = _ground_truth_overlays(gt_annotations.get(row["image_id"], []), row["height"],
                                                        row["width"], names, gt)
                picture = _side_by_side(picture, _titled(draw_overlays(pixels, truth_overlays, colours),
                                                         "ground truth"))
            picture.save(staging / f"{row['image_id']}.png")
            pictures.append(folder / f"{row['image_id']}.png")
            cards.append((f"{row['image_id']}.png", row["image_id"], row["uri"], len(overlays)))
        _summary_plot(counts, scores, categories, staging / "summary.png")
        (staging / "index.html").write_text(_contact_sheet(cards, pred, label_filter.describe(categories), failed,
                                                           errors), encoding="utf-8")
    return VisualizeResult(pictures=pictures, index=folder / "index.html", summary=folder / "summary.png",
                           errors=errors)


def plural(count: int, noun: str) -> str:
    """``1 detection``, ``2 detections``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _error_section(failed: list[tuple[int, str, str]], errors: int) -> str:
    if not errors:
        return ""
    items = "\n".join(f"<li>{image_id} &middot; <code>{html.escape(uri)}</code>: {html.escape(reason)}</li>"
                      for image_id, uri, reason in failed)
    more = f"<p>... and {errors - len(failed)} more (all in the Parquet rows with status error).</p>" \
        if errors > len(failed) else ""
    return f"<h2>{plural(errors, 'error image')}</h2>\n<ul>\n{items}\n</ul>{more}"


def _contact_sheet(cards: list[tuple[str, int, str, int]], pred: str, kept: str,
                   failed: list[tuple[int, str, str]], errors: int) -> str:
    figures = "\n".join(
        f'<figure><a href="{html.escape(name)}"><img src="{html.escape(name)}" loading="lazy"></a>'
        f"<figcaption>{image_id} &middot; {plural(count, 'detection')}<br><small>{html.escape(uri)}</small>"
        "</figcaption></figure>"
        for name, image_id, uri, count in sorted(cards, key=lambda c: c[1])
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>labeler: {html.escape(pred)}</title>
<style>body{{font-family:sans-serif;margin:1em}} main{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0;width:360px}} img{{width:100%;border:1px solid #ccc}} figcaption{{font-size:12px}}</style>
</head><body><h1>{html.escape(pred)}</h1>
<p>{plural(len(cards), 'sampled image')}, detections kept: {html.escape(kept)}.
<a href="summary.png">per-class counts and score histogram</a></p>
<img src="summary.png" style="max-width:900px;width:100%">
<main>
{figures}
</main>
{_error_section(failed, errors)}
</body></html>
"""
