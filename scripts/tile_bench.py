"""Peak memory and time per megapixel of labelling a large image, against the tile size (``labeler run --tile``).

    .venv/bin/python scripts/tile_bench.py [--size 3072 4096] [--tiles off 1024 512 256] [--sam2 random:tiny]
                                           [--dinov2 random:tiny] [--device cpu] [--dtype auto]
                                           [--points-per-side 8] [--objects 40] [--repeats 2] [--json FILE]

One generated image of ``--size`` (height, width) with ``--objects`` small shapes goes through the stages of
``labeler run`` in one process, without Ray: decode (and cut into tiles), the SAM2 stage, the DINOv2 stage,
each tile size in a fresh process (so each peak is its own). For each: seconds per megapixel of every stage
(best of ``--repeats``), the process's peak resident memory while labelling, its growth over the resident
memory with the models loaded (Linux ``VmHWM``, reset once they are), and the bytes
of the image's row between the stages (what Ray's object store holds per image in flight). The models are
the ``random:`` ones named (the bank is built with ``--dinov2``); on the CPU, with one thread, what this
measures is the tiling's own work and memory, the models' cost per tile being the bench's (``labeler bench``)
times the tile count. ``scripts/gpu_bench.sh``'s ``tiled`` row runs it on a GPU with the real sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def resident_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last :func:`reset_peak`) of this process, in kB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Start ``VmHWM`` again from the current resident size (``clear_refs`` 5, Linux); False where refused
    (then the peak includes loading the models)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def megabytes(kilobytes: float) -> float:
    return round(kilobytes / 1024, 1)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_one(args: argparse.Namespace) -> dict:
    """One tile size, in this process: the models, then the image through the stages."""
    from labeler.actors.decode import decode_batch
    from labeler.actors.dinov2_scorer import Dinov2Scorer
    from labeler.actors.sam2_proposer import Sam2Proposer
    from labeler.bank.file import BankFile
    from labeler.method.tiles import Tiling

    if args.device == "cpu":
        torch.set_num_threads(1)
    proposer = Sam2Proposer(args.sam2, device=args.device, points_per_side=args.points_per_side, dtype=args.dtype,
                            tiles_per_batch=8)
    scorer = Dinov2Scorer(BankFile.read(args.bank), device=args.device, dtype=args.dtype, tiles_per_batch=8)
    peak_reset = reset_peak()
    models_kb = resident_kb("VmRSS")
    tiling = Tiling.from_option(args.one, proposer.image_size)
    batch = {"image_id": np.array([1]), "uri": np.array([args.image], dtype=object)}
    times: dict[str, list[float]] = {"decode": [], "sam2": [], "dinov2": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        decoded = decode_batch(dict(batch), sam2_size=proposer.image_size, max_pixels=10**10, tiling=tiling)
        decoded_at = time.perf_counter()
        proposals = proposer.label(dict(decoded))
        synchronize(args.device)
        proposed_at = time.perf_counter()
        labels = scorer.label(dict(proposals))
        synchronize(args.device)
        times["decode"].append(decoded_at - start)
        times["sam2"].append(proposed_at - decoded_at)
        times["dinov2"].append(time.perf_counter() - proposed_at)
    row = labels.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    megapixels = row["width"] * row["height"] / 1e6
    peak_kb = resident_kb("VmHWM")
    tiles = len(decoded["tile_boxes"][0]) if "tile_boxes" in decoded else 0
    device_peak = {}
    if args.device.startswith("cuda"):
        device_peak["device_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {
        "tile": args.one,
        "tiles": tiles,
        "proposals": row["proposals"],
        "detections": len(row["detections"]),
        **{f"{stage}_s_per_mp": round(min(values) / megapixels, 4) for stage, values in times.items()},
        "total_s_per_mp": round(sum(min(values) for values in times.values()) / megapixels, 4),
        "decoded_row_mb": round(np.asarray(decoded["sam2_pixels"][0]).nbytes / 2**20, 2),
        "proposals_row_mb": round(int(proposals["transfer_bytes"][0]) / 2**20, 2),
        "models_rss_mb": megabytes(models_kb),
        "peak_rss_mb": megabytes(peak_kb),
        "peak_over_models_mb": megabytes(peak_kb - models_kb),
        "peak_reset_after_models": peak_reset,
        **device_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[3072, 4096], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--tiles", nargs="+", default=["off", "1024", "512", "256"])
    parser.add_argument("--sam2", default="random:tiny")
    parser.add_argument("--dinov2", default="random:tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return

    from labeler.bank.build import build_bank
    from labeler.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        refs = generate_dataset(root / "refs", 2, seed=1)
        bank = root / "bank.safetensors"
        build_bank(str(refs), str(root / "refs" / "images"), dinov2=args.dinov2, sam2=args.sam2,
                   device=args.device).save(str(bank))
        height, width = args.size
        generate_dataset(root / "target", 1, seed=5, image_size=(width, height),
                         objects_per_image=(args.objects, args.objects), subfolders=False, image_format="jpg")
        image = next((root / "target" / "images").glob("*.jpg"))
        rows = []
        for tile in args.tiles:
            command = [sys.executable, __file__, "--one", tile, "--image", str(image), "--bank", str(bank),
                       "--sam2", args.sam2, "--points-per-side", str(args.points_per_side),
                       "--device", args.device, "--dtype", args.dtype,
                       "--repeats", str(args.repeats)]
            rows.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
            print(json.dumps(rows[-1]), flush=True)
    report = {"image": f"{width}x{height}", "megapixels": round(width * height / 1e6, 2), "sam2": args.sam2,
              "dinov2": args.dinov2, "device": args.device, "dtype": args.dtype,
              "points_per_side": args.points_per_side, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
