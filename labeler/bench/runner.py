"""``labeler bench``: throughput of each stage, of the pipeline, and what N images will cost.

docs/PERFORMANCE.md ("What `labeler bench` measures") is the contract. The stages are timed in-process
after warm-up batches, through the actors' own steps (``labeler run``'s code), the device synchronised at
each stage boundary; proposals are pinned (``--proposals``) to SAM2-like masks, since random SAM2 weights
make salt-and-pepper ones; :data:`PROFILED_BATCHES` more batches split each stage's time into torch
operators and host work (:mod:`labeler.bench.stage_timing`). The Ray run is ``labeler run`` itself.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from labeler.actors.decode import decode_batch
from labeler.actors.dinov2_scorer import Dinov2Scorer
from labeler.actors.sam2_proposer import Sam2Proposer
from labeler.bank.build import build_bank
from labeler.bank.file import BankFile
from labeler.bench.config import BenchConfig
from labeler.bench.equivalence import compare_labels
from labeler.bench.stage_timing import StageClock, host_split, top_operators
from labeler.devices import resolve_device
from labeler.errors import LabelerError
from labeler.io.labels import STATUS_OK, LabelRows
from labeler.io.proposal_payload import encode_proposals, payload_columns
from labeler.method import defaults
from labeler.models.sam2_inference import Sam2Features
from labeler.models.work_count import count_work
from labeler.outdir.shards import write_shard
from labeler.run.manifest import package_versions
from labeler.synthetic import generate_dataset, proposal_logits

#: Batches run again under the profiler for the host/torch split.
PROFILED_BATCHES = 2

#: Dense bf16 tensor-core peak and HBM3 bandwidth of an H100 SXM (NVIDIA's
#: datasheet, without sparsity), for the floors of the counted work.
H100_BF16_FLOPS = 989e12
H100_MEMORY_BYTES_PER_S = 3.35e12

MODEL_STAGES = ("sam2_encoder", "sam2_decoder", "handoff", "dinov2", "scoring", "masks_rle")
NETWORK_STAGES = ("sam2_encoder", "sam2_decoder", "dinov2")
STAGE_TITLES = {
    "decode": "read + decode + resize (CPU)",
    "sam2_encoder": "SAM2 image encoder",
    "sam2_decoder": "SAM2 prompt decoding (+ best-of-3, filter)",
    "handoff": "proposal hand-off (pack + unpack)",
    "dinov2": "DINOv2 features",
    "scoring": "embeddings, classes, NMS on the low-res grid",
    "masks_rle": "masks at image size + boxes + RLE + soft merging + top 100",
    "writing": "Parquet writing (CPU)",
}


def default_models(device: torch.device) -> tuple[str, str]:
    """The real sizes (random weights) on a GPU, the tiny test models on the CPU."""
    return ("random:l", "random:large") if device.type == "cuda" else ("random:tiny", "random:tiny")


@dataclass
class Plan:
    """GPU-hours and wall time of labelling ``images`` on ``gpus`` devices like this one."""

    images: int
    gpus: int
    images_per_second_per_gpu: float
    gpu_hours: float
    wall_hours: float


def make_plan(images: int, gpus: int, images_per_second: float) -> Plan:
    """Scale the measured per-device rate to ``images`` on ``gpus`` devices."""
    gpu_hours = images / images_per_second / 3600 if images_per_second > 0 else math.inf
    return Plan(images, gpus, images_per_second, gpu_hours, gpu_hours / gpus)


@dataclass
class BenchReport:
    """What ``labeler bench`` measured.

    ``stages`` are milliseconds per image; ``host`` has, per stage and image,
    the milliseconds outside torch operators (``host_ms``) and the top-level
    torch operators called (``operators``), from the profiled batches.
    """

    device: str
    versions: dict[str, str]
    settings: dict[str, Any]
    images_timed: int
    stages: dict[str, float]
    proposals_per_image: float
    detections_per_image: float
    peak_gpu_memory_mb: float | None
    flops_per_image: dict[str, float]
    bytes_written_per_image: dict[str, float]
    host: dict[str, dict[str, float]] = field(default_factory=dict)
    pipeline: dict[str, float] | None = None
    plan: Plan | None = None
    agreement: dict[str, Any] | None = None
    top_operators: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warmup_seconds: float = 0.0  # the untimed batches, compilation included
    compile_cache: dict[str, dict[str, bool]] | None = None  # per model stage: loaded a saved cache, saved its own

    @property
    def model_ms_per_image(self) -> float:
        """The model actors' work per image: every stage but decoding and writing."""
        return sum(self.stages[name] for name in MODEL_STAGES)

    @property
    def model_images_per_second(self) -> float:
        return 1000.0 / self.model_ms_per_image if self.model_ms_per_image > 0 else 0.0

    @property
    def host_ms_outside_networks(self) -> float:
        """Host CPU work per image outside the networks: every stage but the three
        network stages, less its time inside torch operators."""
        return sum(split["host_ms"] for name, split in self.host.items() if name not in NETWORK_STAGES)

    @property
    def flop_floor_ms(self) -> float:
        """Milliseconds per image an H100 would need at its bf16 peak for the counted FLOPs."""
        return sum(self.flops_per_image.values()) / H100_BF16_FLOPS * 1000.0

    @property
    def bandwidth_floor_ms(self) -> float:
        """Milliseconds per image an H100's memory needs to write the counted bytes and
        read them back once, as the networks ran here (eager, in this run's dtype)."""
        return 2 * sum(self.bytes_written_per_image.values()) / H100_MEMORY_BYTES_PER_S * 1000.0

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["model_ms_per_image"] = round(self.model_ms_per_image, 3)
        document["model_images_per_second"] = round(self.model_images_per_second, 3)
        document["host_ms_outside_networks"] = round(self.host_ms_outside_networks, 3)
        document["h100_flop_floor_ms_per_image"] = round(self.flop_floor_ms, 3)
        document["h100_bandwidth_floor_ms_per_image"] = round(self.bandwidth_floor_ms, 3)
        return document

    def table(self) -> str:
        lines = [f"device: {self.device}", "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
                 f"images timed: {self.images_timed} (after {self.warmup_seconds:.1f} s of warm-up)", "",
                 f"{'stage':<48}{'ms/img':>10}{'img/s':>10}{'host ms/img':>13}{'torch ops/img':>15}"]
        for name, title in STAGE_TITLES.items():
            ms, split = self.stages[name], self.host.get(name, {"host_ms": 0.0, "operators": 0.0})
            lines.append(f"{title:<48}{ms:>10.2f}{(1000 / ms if ms > 0 else 0):>10.2f}"
                         f"{split['host_ms']:>13.2f}{split['operators']:>15.0f}")
        lines.append(f"{'model stages (all but decode, writing)':<48}{self.model_ms_per_image:>10.2f}"
                     f"{self.model_images_per_second:>10.2f}")
        lines.append(f"host CPU work outside the networks (outside torch operators): "
                     f"{self.host_ms_outside_networks:.2f} ms/img at {self.settings['image_size']}")
        lines += ["", f"proposals scored per image: {self.proposals_per_image:.0f}; "
                  f"detections per image: {self.detections_per_image:.1f}"]
        memory = "n/a (CPU)" if self.peak_gpu_memory_mb is None else f"{self.peak_gpu_memory_mb:.0f} MB"
        lines.append(f"peak GPU memory: {memory}")
        gflops = {k: v / 1e9 for k, v in self.flops_per_image.items()}
        lines.append("GFLOPs per image: " + ", ".join(f"{k} {v:.1f}" for k, v in gflops.items())
                     + f"; total {sum(gflops.values()):.1f} -> H100 bf16 floor {self.flop_floor_ms:.2f} ms/img")
        gbytes = {k: v / 1e9 for k, v in self.bytes_written_per_image.items()}
        lines.append(f"GB written per image (eager, {self.settings['dtype']}): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in gbytes.items())
                     + f"; total {sum(gbytes.values()):.2f} -> H100 bandwidth floor {self.bandwidth_floor_ms:.2f} ms/img")
        if self.pipeline:
            lines.append(f"pipeline (labeler run through Ray, start-up included): {self.pipeline['images']:.0f} images "
                         f"in {self.pipeline['wall_seconds']:.1f} s = {self.pipeline['images_per_second']:.2f} img/s")
        if self.agreement:
            a = self.agreement
            lines.append(f"against plain fp32 ({a['images']} images, unpinned): same labels {a['same_labels']}; "
                         f"detections {a['plain_detections']} -> {a['fast_detections']}, "
                         f"other class {a['category_differs']}, mask IoU min {a['min_mask_iou']:.3f} "
                         f"median {a['median_mask_iou']:.3f}, largest score gap {a['max_score_diff']:.4f}")
        if self.top_operators:
            lines.append("top operators by device time (ms per image, calls per image):")
            lines += [f"  {op['ms']:9.3f} {op['calls']:7.1f}  {op['name'][:110]}" for op in self.top_operators]
        if self.compile_cache:
            lines.append("compile cache: " + ", ".join(f"{k} {v}" for k, v in self.compile_cache.items()))
        if self.plan:
            plan = self.plan
            lines.append(f"plan: {plan.images:,} images at {plan.images_per_second_per_gpu:.2f} img/s per device: "
                         f"{plan.gpu_hours:,.1f} device-hours, {plan.wall_hours:,.1f} h wall on {plan.gpus}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def pin_proposals(
    logits: torch.Tensor, iou: torch.Tensor, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``count`` proposals in place of the decoder's: the highest predicted
    IoUs (cycled if there are fewer) with SAM2-like masks of the same low-res
    size (:func:`labeler.synthetic.proposal_logits` with ``seed``)."""
    if logits.shape[0] == 0 or count == 0:
        return logits[:0], iou[:0]
    order = torch.argsort(iou, descending=True, stable=True)
    chosen = order[torch.arange(count, device=order.device) % order.numel()]
    return proposal_logits(count, tuple(logits.shape[1:]), seed, device=logits.device), iou[chosen]


def prompts_per_image(config: BenchConfig) -> int:
    """SAM2 prompts per image: the grid, or the matched points."""
    grid = config.points_per_side**2
    return min(config.matched_points, grid) if config.prompts == "matched" else grid


def pinned_count(config: BenchConfig) -> int:
    """Proposals per image to pin: ``config.proposals`` for the full grid, the
    same surviving fraction of the prompts for matched prompts (0: not pinned)."""
    return round(config.proposals * prompts_per_image(config) / config.points_per_side**2)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _generate(folder: Path, config: BenchConfig, dinov2: str, sam2: str, device: torch.device) -> tuple[Path, Path]:
    """Target images (JPEG) and a bank built from generated references."""
    targets = generate_dataset(folder / "targets", config.images, seed=1, image_size=config.image_size,
                               objects_per_image=(2, 6), image_format="jpg")
    references = generate_dataset(folder / "references", 8, seed=0)
    bank = build_bank(str(references), str(references.parent / "images"), dinov2=dinov2, sam2=sam2,
                      shots=None, seed=0, device=str(device))
    bank_path = folder / "bank.safetensors"
    bank.save(str(bank_path))
    return targets.parent / "images", bank_path


def _batches(images_dir: Path, batch_size: int) -> list[dict[str, np.ndarray]]:
    uris = sorted(str(p) for p in images_dir.rglob("*.jpg"))
    return [
        {"image_id": np.arange(start, start + len(uris[start : start + batch_size]), dtype=np.int64),
         "uri": np.array(uris[start : start + batch_size], dtype=object)}
        for start in range(0, len(uris), batch_size)
    ]


def _count_work(proposer: Sam2Proposer, scorer: Dinov2Scorer, decoded: dict, prompts_per_image: int) -> dict:
    """Work of one image through each network (:func:`labeler.models.work_count.count_work`).

    The decoder is counted on one batch of prompts and scaled to the image's
    prompt count (compiled runs pad each batch to ``points_per_batch``).
    """
    work = {}
    features: list[Sam2Features] = []
    work["sam2_encoder"] = count_work(lambda: features.append(proposer.encode(decoded["sam2_pixels"][:1])))
    batch = min(proposer.points_per_batch, prompts_per_image)
    decoded_prompts = proposer.points_per_batch if proposer.speedups.compile else batch
    work["sam2_decoder"] = count_work(
        lambda: proposer.decode(features[0], [proposer.grid[:batch]], pred_iou_thr=-1.0)
    ).scaled(prompts_per_image / decoded_prompts)
    work["dinov2"] = count_work(lambda: scorer.features({"sam2_pixels": decoded["sam2_pixels"][:1]}, np.array([0])))
    return work


def _time_batch(
    clock: StageClock, batch: dict, config: BenchConfig, proposer: Sam2Proposer, scorer: Dinov2Scorer,
    sizes: dict[str, int], out: str,
) -> tuple[int, int]:
    """Run one batch through every stage; returns (proposals, detections) summed over its images."""
    with clock.stage("decode"):
        decoded = decode_batch(batch, **sizes)
    ok = np.flatnonzero(decoded["status"] == STATUS_OK)
    with clock.stage("dinov2"):
        points, dino_features = proposer.prompt_points(decoded["sam2_pixels"][ok])
        features = dino_features if dino_features is not None else scorer.features(decoded, ok)
    with clock.stage("sam2_encoder"):
        sam2_features = proposer.encode(decoded["sam2_pixels"][ok])
    pinned = pinned_count(config)
    with clock.stage("sam2_decoder"):
        proposals = proposer.decode(sam2_features, points, pred_iou_thr=-1.0 if pinned else None)
    if pinned:
        proposals = [pin_proposals(logits, iou, pinned, seed=int(image_id))
                     for (logits, iou), image_id in zip(proposals, decoded["image_id"][ok])]
    with clock.stage("handoff"):
        image_hws = [(int(decoded["height"][index]), int(decoded["width"][index])) for index in ok]
        columns = payload_columns([encode_proposals(logits, iou, hw) for (logits, iou), hw in zip(proposals, image_hws)])
        columns["height"], columns["width"] = decoded["height"][ok], decoded["width"][ok]
        received = [scorer.received(columns, k) for k in range(len(ok))]
    with clock.stage("scoring"):
        ranked = [scorer.rank(proposals, scorer.embed(proposals, features[k])) for k, proposals in enumerate(received)]
    with clock.stage("masks_rle"):
        detections = [scorer.select(ranking, proposals) for ranking, proposals in zip(ranked, received)]
    with clock.stage("writing"):
        rows = LabelRows()
        for index, found, proposals in zip(ok, detections, received):
            height, width = proposals.image_hw
            rows.add_ok(image_id=int(decoded["image_id"][index]), uri=str(decoded["uri"][index]), width=width,
                        height=height, detections=found, proposals=int(proposals.masks.shape[0]))
        write_shard(out, rows.table())
    return sum(int(p.masks.shape[0]) for p in received), sum(len(found) for found in detections)


def _actors(config: BenchConfig, sam2: str, bank: BankFile, device: torch.device, dtype: str,
            compile: bool) -> tuple[Sam2Proposer, Dinov2Scorer]:
    """The two model stages as ``labeler run`` makes them, at the method's default NMS and detections."""
    cache = config.compile_cache if compile else None
    proposer = Sam2Proposer(sam2, device=str(device), points_per_side=config.points_per_side,
                            points_per_batch=config.points_per_batch, dtype=dtype, compile=compile,
                            prompts=config.prompts, matched_points=config.matched_points, bank=bank,
                            compile_cache=cache)
    scorer = Dinov2Scorer(bank, device=str(device), nms_thr=defaults.NMS_THR, max_dets=defaults.MAX_DETS,
                          dtype=dtype, compile=compile, compile_cache=cache)
    return proposer, scorer


def _check_against_fp32(
    config: BenchConfig, sam2: str, bank: BankFile, device: torch.device, proposer: Sam2Proposer,
    scorer: Dinov2Scorer, decoded: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Label one decoded batch through the timed actors and through plain fp32 actors
    with the same (seeded) weights, proposals not pinned; see :mod:`labeler.bench.equivalence`."""
    plain_proposer, plain_scorer = _actors(config, sam2, bank, device, "fp32", False)
    plain = plain_scorer(plain_proposer(dict(decoded))).to_pylist()
    del plain_proposer, plain_scorer
    fast = scorer(proposer(dict(decoded))).to_pylist()
    return compare_labels(plain, fast).to_json()


def _require_ray() -> None:
    """Fail before any timing where Ray is missing (the GPU machines lent here have none)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise LabelerError("Ray is not installed here: add --no-ray to time the stages without the pipeline") from None


def _pipeline(config: BenchConfig, sam2: str, images_dir: Path, bank_path: Path, out: Path) -> dict[str, float]:
    from labeler.run.config import RunConfig
    from labeler.run.driver import run_labeling

    summary = run_labeling(RunConfig(
        bank=str(bank_path), images=str(images_dir), out=str(out), sam2=sam2, points_per_side=config.points_per_side,
        points_per_batch=config.points_per_batch, batch_size=config.batch_size, dtype=config.dtype,
        compile=config.compile, prompts=config.prompts, matched_points=config.matched_points, overwrite=True,
    ))
    return {"images": float(summary.images_processed), "wall_seconds": summary.wall_seconds,
            "images_per_second": summary.images_per_second}


def run_bench(
    config: BenchConfig, work_dir: str | None = None, say: Callable[[str], None] = lambda message: None
) -> BenchReport:
    """Generate data, time every stage after warm-up, then the Ray pipeline; see the module doc.

    ``say`` hears one line as each phase ends, with the seconds since the start.
    """
    config.validate()
    started = time.perf_counter()

    def phase(message: str) -> None:
        say(f"bench: {message} ({time.perf_counter() - started:.1f} s)")

    if not config.no_ray:
        _require_ray()
    device = resolve_device(config.device)
    sam2, dinov2 = default_models(device)
    sam2, dinov2 = config.sam2 or sam2, config.dinov2 or dinov2
    with tempfile.TemporaryDirectory(prefix="labeler-bench-", dir=work_dir) as folder:
        images_dir, bank_path = _generate(Path(folder), config, dinov2, sam2, device)
        phase("images and bank generated")
        bank = BankFile.read(str(bank_path))
        proposer, scorer = _actors(config, sam2, bank, device, config.dtype, config.compile)
        sizes = {"sam2_size": proposer.image_size}
        phase("models loaded")
        batches = _batches(images_dir, config.batch_size)
        warmup = [batches[i % len(batches)] for i in range(config.warmup_batches)]
        out = str(Path(folder) / "bench-out")

        def time_batch(batch: dict, clock: StageClock | None = None) -> tuple[int, int]:
            return _time_batch(clock or StageClock(device), batch, config, proposer, scorer, sizes, out)

        warmup_started = time.perf_counter()
        for batch in warmup:
            time_batch(batch)
        warmup_seconds = time.perf_counter() - warmup_started
        caches = {}
        for stage in (proposer, scorer):
            stage.save_compile_cache()
            if stage.compile_cache is not None:
                caches[stage.stage] = {"loaded": stage.compile_cache.loaded, "saved": stage.compile_cache.saved}
        phase(f"{len(warmup)} warm-up batch(es) done")
        work = _count_work(proposer, scorer, decode_batch(batches[0], **sizes), prompts_per_image(config))
        phase("work counted")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock = StageClock(device)
        proposals = detections = 0
        for batch in batches:
            batch_proposals, batch_detections = time_batch(batch, clock)
            proposals += batch_proposals
            detections += batch_detections
            phase(f"timed batch of {len(batch['image_id'])} images")
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        stages = {name: clock.seconds[name] * 1000.0 / config.images for name in STAGE_TITLES}
        profiled = batches[:PROFILED_BATCHES]
        splits = host_split(lambda: [time_batch(batch) for batch in profiled])
        per_image = 1.0 / sum(len(batch["image_id"]) for batch in profiled)
        phase("host work profiled")
        host = {name: {"host_ms": splits[name].host_ms * per_image, "operators": splits[name].operators * per_image}
                for name in STAGE_TITLES}
        operators = []
        if config.top_operators:
            batch = batches[0]
            operators = [{**op, "ms": op["ms"] / len(batch["image_id"]), "calls": op["calls"] / len(batch["image_id"])}
                         for op in top_operators(lambda: time_batch(batch), device, config.top_operators)]
            phase("operators profiled")
        agreement = None
        if config.check:
            agreement = _check_against_fp32(config, sam2, bank, device, proposer, scorer,
                                            decode_batch(batches[0], **sizes))
            phase("checked against plain fp32")
        pipeline = None
        if not config.no_ray:
            pipeline = _pipeline(config, sam2, images_dir, bank_path, Path(folder) / "run-out")
    settings = {
        "sam2": sam2, "dinov2": dinov2, "image_size": "x".join(map(str, config.image_size)),
        "batch_size": config.batch_size, "dtype": proposer.speedups.dtype, "compile": config.compile,
        "points_per_side": config.points_per_side, "points_per_batch": config.points_per_batch,
        "prompts": config.prompts if config.prompts == "grid" else f"matched ({config.matched_points} points)",
        "proposals": f"pinned at {pinned_count(config)}" if config.proposals else "not pinned",
    }
    report = BenchReport(
        device=_device_name(device), versions=package_versions(), settings=settings, images_timed=config.images,
        stages=stages, proposals_per_image=proposals / config.images, detections_per_image=detections / config.images,
        peak_gpu_memory_mb=peak, flops_per_image={name: w.flops for name, w in work.items()},
        bytes_written_per_image={name: w.bytes_written for name, w in work.items()}, host=host, pipeline=pipeline,
        agreement=agreement, top_operators=operators, warmup_seconds=warmup_seconds, compile_cache=caches or None,
    )
    if config.plan_images:
        report.plan = make_plan(config.plan_images, config.gpus, report.model_images_per_second)
    if device.type == "cpu":
        report.notes.append("CPU run: 'per device' rates are per CPU machine, not per GPU")
    return report


def write_report(report: BenchReport, path: str) -> None:
    """Save the report as JSON (path or URI)."""
    from labeler.io import markers, storage

    storage.write_bytes_atomic(path, json.dumps({"format": markers.BENCH_REPORT, **report.to_json()}, indent=2).encode())
