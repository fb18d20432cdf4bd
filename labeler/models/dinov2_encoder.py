"""DINOv2 patch features as docs/method.md specifies them.

Inputs are floats on the 0..1 scale, resized to ``input_size`` (518) with
bicubic interpolation, without antialiasing or clamping (a target is the
SAM2 input resized, as the reference does: :func:`unit_scale`,
:func:`resize_to_input`), and normalised with ImageNet mean/std; the features are the final
layer-normed patch tokens (CLS and register tokens dropped), as a
``[B, g, g, D]`` grid with ``g = input_size / patch_size`` (37 for 518/14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from labeler.models.dinov2_builder import load_dinov2_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 518


def unit_scale(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 on the 0..1 scale (equal to the reference's float64 ``/ 255``, then float32)."""
    return pixels.float() / 255.0


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` floats on the 0..1 scale, ImageNet-normalised (as torchvision's ``Normalize``)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def resize_to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` floats to ``size`` x ``size``: bicubic, no antialiasing, no clamping
    (the reference's ``F.interpolate(..., mode="bicubic")``); a no-op at that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


@dataclass
class Dinov2Encoder:
    """A DINOv2 model with the preprocessing and token layout it needs.

    Attributes:
        model: the transformers model.
        spec: the model spec it was loaded from (recorded in banks).
        input_size: square input side in pixels (518).
    """

    model: PreTrainedModel
    spec: str
    input_size: int = DEFAULT_INPUT_SIZE

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def grid_size(self) -> int:
        """Side of the patch-feature grid (37 for a 518 input and patch 14)."""
        return self.input_size // self.patch_size

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def prefix_tokens(self) -> int:
        """CLS plus register tokens before the patch tokens."""
        return 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "Dinov2Encoder":
        self.model.to(device)
        return self

    @torch.inference_mode()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of ``[B, 3, input_size, input_size]`` float images on the 0..1 scale.

        Returns ``[B, g, g, D]`` float32 features.
        """
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} input, got {tuple(images.shape[-2:])}")
        pixel_values = normalize_imagenet(images.to(self.device))
        tokens = self.model(pixel_values=pixel_values).last_hidden_state
        patches = tokens[:, self.prefix_tokens :, :]
        grid = self.grid_size
        return patches.reshape(patches.shape[0], grid, grid, patches.shape[-1]).float()

    def target_features(self, sam2_pixels: torch.Tensor) -> torch.Tensor:
        """Features of target images from their ``[B, S, S, 3]`` uint8 SAM2 inputs, which
        are resized to the encoder's input as the reference does (:func:`resize_to_input`)."""
        images = unit_scale(sam2_pixels.to(self.device).permute(0, 3, 1, 2))
        return self.patch_features(resize_to_input(images, self.input_size))


def load_dinov2(text: str, device: torch.device | str = "cpu", input_size: int = DEFAULT_INPUT_SIZE) -> Dinov2Encoder:
    """Load the DINOv2 encoder a spec names, on ``device``."""
    return Dinov2Encoder(model=load_dinov2_model(text), spec=text, input_size=input_size).to(device)
