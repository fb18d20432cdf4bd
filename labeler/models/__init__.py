"""Model loading: the one place that resolves ``--sam2`` and ``--dinov2`` specs."""

from labeler.models.dinov2_encoder import Dinov2Encoder, load_dinov2
from labeler.models.sam2_builder import load_sam2

DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"
DEFAULT_DINOV2 = "facebook/dinov2-large"

__all__ = ["DEFAULT_DINOV2", "DEFAULT_SAM2", "Dinov2Encoder", "load_dinov2", "load_sam2"]
