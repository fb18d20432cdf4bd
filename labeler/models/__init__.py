"""Model loading: the one place that resolves ``--sam2`` and ``--dinov2`` specs."""

from labeler.models.dinov2_encoder import Dinov2Encoder, load_dinov2
from labeler.models.sam2_builder import load_sam2

__all__ = ["Dinov2Encoder", "load_dinov2", "load_sam2"]
