"""Time ``labeler review merge`` on one task with many regions of one class.

A run of one image holding N square detections of one class is prepared for
review (each detection becomes a brush region and a box region in the task, as
``labeler review`` writes them), the reviewer "accepts" every region, and the
export is merged. Prints one JSON line per N: seconds for the merge.

    python scripts/review_merge_bench.py --regions 250 500 1000 2000 --size 1152x864
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from labeler.io.coco import Category
from labeler.io.labels import Detections, LabelRows
from labeler.outdir.shards import write_shard
from labeler.review.merge import merge_review
from labeler.review.prepare import prepare_review


def make_run(folder: Path, regions: int, width: int, height: int) -> Path:
    side = int(np.sqrt(width * height / regions))
    while (width // (side + 2)) * (height // (side + 2)) < regions:
        side -= 1
    columns = width // (side + 2)
    detections = []
    for k in range(regions):
        x, y = (k % columns) * (side + 2), (k // columns) * (side + 2)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[y:y + side, x:x + side] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        detections.append({"category_id": 1, "score": 0.9, "bbox": [x, y, side, side], "area": side * side,
                           "rle": rle["counts"].decode()})
    rows = LabelRows()
    image = folder / "image.png"
    image.write_bytes(b"")
    rows.add_ok(image_id=1, uri=str(image), width=width, height=height, detections=Detections.from_dicts(detections),
                proposals=regions, file_name="image.png")
    out = folder / "run"
    out.mkdir()
    write_shard(str(out), rows.table(), categories=[Category(1, "thing")])
    (out / "run.json").write_text(json.dumps({"categories": [{"id": 1, "name": "thing"}],
                                              "source_root": str(folder)}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--size", default="1152x864")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    for regions in args.regions:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            out = make_run(folder, regions, width, height)
            review = prepare_review(str(out), str(folder / "review"), n=1, min_score=0.0, random_fraction=0.0)
            tasks = json.loads(Path(review.tasks).read_text())
            export = [{"id": 1, "data": task["data"], "annotations": [
                {"id": 1, "was_cancelled": False, "result": copy.deepcopy(task["predictions"][0]["result"])}]}
                for task in tasks]
            (folder / "export.json").write_text(json.dumps(export))
            started = time.perf_counter()
            merged = merge_review(str(out), str(folder / "review"), str(folder / "export.json"), str(folder / "final"))
            seconds = time.perf_counter() - started
            kept = sum(f.kept for f in merged.figures_all.values())
            print(json.dumps({"regions": regions, "image": args.size, "merge_s": round(seconds, 2), "kept": kept}))


if __name__ == "__main__":
    main()
