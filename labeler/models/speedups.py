"""The fast path's switches, in one place: precision and ``torch.compile``.

Attention already runs through PyTorch's scaled-dot-product attention in
both models (SAM2's own modules call it; DINOv2 is loaded with
transformers' ``sdpa`` implementation), so flash/memory-efficient kernels
are picked by PyTorch wherever the dtype and device allow.

* ``dtype``: ``fp32`` runs the plain path; ``bf16`` / ``fp16`` run the models
  under ``torch.autocast``; ``auto`` is ``bf16`` on CUDA and ``fp32`` on the
  CPU. Everything after the networks (best-of-three, NMS, merging, mask
  upsampling) runs in float32 whatever the dtype.
  SAM2's mask decoder is held in the reduced dtype outright
  (:func:`decoder_in_dtype`).
* ``compile``: ``torch.compile`` on SAM2's image encoder, the proposal
  decoder's steps (:func:`compile_sam2`) and the DINOv2 network, with static
  shapes; prompt batches are then padded to one size, so the decoder's
  transformer compiles once and the encoders once per image-batch size seen
  (the last batch of a block can be smaller).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from labeler.errors import LabelerError
from labeler.method import defaults
from labeler.models.sam2_decoder import ProposalDecoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Speedups:
    """Resolved fast-path settings for one device."""

    dtype: str = "fp32"
    compile: bool = False

    @classmethod
    def resolve(cls, dtype: str, compile: bool, device: torch.device) -> "Speedups":
        """Check ``dtype`` (``auto``, ``fp32``, ``bf16``, ``fp16``) and fix ``auto`` for ``device``."""
        if dtype not in defaults.DTYPE_CHOICES:
            raise LabelerError(f"--dtype: expected one of {', '.join(defaults.DTYPE_CHOICES)}, got {dtype!r}")
        if dtype == "auto":
            dtype = "bf16" if device.type == "cuda" else "fp32"
        return cls(dtype=dtype, compile=compile)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context the networks run under: nothing for fp32, autocast otherwise."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.torch_dtype)


def decoder_in_dtype(model: torch.nn.Module, speedups: Speedups) -> None:
    """Hold SAM2's mask decoder in the reduced dtype itself (bf16 / fp16), not under autocast.

    Measured on an H100 (docs/PERFORMANCE.md): under bf16 autocast over
    half of the eager decoder's GPU time went to float32 adds, layer norms,
    casts and copies of the per-prompt image tokens, which autocast keeps
    in float32. :func:`labeler.models.sam2_inference.decode_prompts` runs the
    decoder in its weights' dtype with autocast off.
    """
    if speedups.dtype != "fp32":
        model.sam_mask_decoder.to(speedups.torch_dtype)


def compile_modules(*modules: torch.nn.Module) -> None:
    """``torch.compile`` each module in place, for static shapes."""
    for module in modules:
        module.compile(dynamic=False)


def compile_sam2(model: torch.nn.Module, decoder: ProposalDecoder) -> None:
    """Compile SAM2's image encoder and the proposal decoder's two prompt steps (the prompt encoder
    is a few table lookups; the per-image step runs once per batch of images).

    The transformer step sees one shape (prompt batches are padded); the upscaling step sees as
    many prompts as pass the predicted-IoU filter, so it is compiled for a dynamic count.
    SAM2's sine position encoding fills a table cache on its first call, a
    side effect that would make the compiled encoder recompile on its
    second call (sam2 warms that cache itself only on CUDA at 1024 pixels).
    One eager pass at the model's input size fills it first.
    """
    size = int(model.image_size)
    device = next(model.parameters()).device
    with torch.inference_mode():
        model.image_encoder(torch.zeros(1, 3, size, size, device=device))
    compile_modules(model.image_encoder)
    decoder.tokens = torch.compile(decoder.tokens, dynamic=False)
    decoder.upscale = torch.compile(decoder.upscale, dynamic=True)
