"""The method's defaults (docs/method.md), torch-free so the CLI and configs can read them cheaply."""

from __future__ import annotations

#: The checkpoints the method uses (docs/method.md), the defaults of ``--sam2`` and ``--dinov2``.
SAM2 = "facebook/sam2.1-hiera-large"
DINOV2 = "facebook/dinov2-large"
#: ``--dtype``: ``auto`` is bf16 on CUDA and fp32 elsewhere (labeler.models.speedups).
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")

#: Proposals (docs/method.md section 2): the prompt grid, prompts decoded together, the predicted-IoU filter.
POINTS_PER_SIDE = 32
POINTS_PER_BATCH = 256
PRED_IOU_THR = 0.4

#: Prompt grid layouts: ``edge-to-edge`` is the reference's (the default),
#: ``cell-centres`` is SAM's automatic mask generator's.
GRID_LAYOUTS = ("edge-to-edge", "cell-centres")
GRID_LAYOUT = "edge-to-edge"

#: ``--prompts``: every grid point, or only the points most like a prototype (labeler.method.matched_prompts).
PROMPT_MODES = ("grid", "matched")
MATCHED_POINTS = 256

#: Scoring (docs/method.md section 3): class-aware NMS and the detections kept per image.
NMS_THR = 0.5
MAX_DETS = 100

#: Reference crops (docs/method.md 1.2): context around each instance, as a share of its box.
CONTEXT_RATIO = 0.2

#: ``--merge``: the method's semantic-aware soft merging, or FSOD-VFM's graph-diffusion rescoring
#: (labeler.method.graph_diffusion) with its defaults: steps, alpha and the decay's exponent.
MERGE_MODES = ("soft", "graph-diffusion")
DIFFUSION_STEPS = 30
DIFFUSION_ALPHA = 0.3
DIFFUSION_LAMBDA = 0.5
#: Negative references (labeler.method.scoring.classify): the reference code's sigma of the decay.
NEGATIVE_SIGMA = 0.8

#: Tiling (``--tile``, labeler.method.tiles): the share of a tile its neighbour sees too, the IoU within that
#: shared band above which two same-class detections of neighbouring tiles are one object, and the largest
#: image labelled in tiles (1 gigapixel: 3 GB of decoded RGB).
TILE_OVERLAP = 0.2
TILE_JOIN_IOU = 0.5
TILE_MAX_PIXELS = 1_000_000_000
