"""SAM2 image encoding and prompt decoding on batches, for any input size.

The same computation as ``sam2.sam2_image_predictor.SAM2ImagePredictor``,
written over batches and without its fixed 1024-pixel feature sizes, so
small test models and large batches go through one path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labeler.devices import to_device
from labeler.method.proposals import keep_proposals
from labeler.models.dinov2_encoder import normalize_imagenet, unit_scale
from labeler.models.sam2_decoder import ProposalDecoder


@dataclass
class Sam2Features:
    """Encoder output for a batch of images.

    Attributes:
        image_embed: ``[B, C, S/16, S/16]`` lowest-resolution embedding.
        high_res_feats: the higher-resolution levels (``[B, C/8, S/4, S/4]``,
            ``[B, C/4, S/8, S/8]``) the mask decoder uses.
    """

    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]

    def select(self, index: int) -> Sam2Features:
        """The features of one image of the batch, keeping a batch dimension of 1."""
        return Sam2Features(
            image_embed=self.image_embed[index : index + 1],
            high_res_feats=[level[index : index + 1] for level in self.high_res_feats],
        )


def sam2_input(resized: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """Normalise ``[B, S, S, 3]`` uint8 images, already resized to the model's
    square input (:func:`labeler.io.images.resize_square`), to a
    ``[B, 3, S, S]`` float batch on ``device``."""
    return normalize_imagenet(unit_scale(to_device(resized, device).permute(0, 3, 1, 2)))


@torch.inference_mode()
def encode_images(model: torch.nn.Module, batch: torch.Tensor, add_no_mem_embed: bool = False) -> Sam2Features:
    """Run the SAM2 image encoder on a normalised ``[B, 3, S, S]`` batch.

    The reference uses the backbone features as they are; SAM2's own image
    predictor adds ``no_mem_embed`` to the lowest level (``add_no_mem_embed``,
    used for box prompts of references, which the reference does not make).
    """
    backbone_out = model.forward_image(batch)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if add_no_mem_embed and model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    # vision_feats are [HW, B, C] per level; the decoder wants [B, C, H, W].
    levels = [
        feat.permute(1, 2, 0).reshape(batch.shape[0], -1, height, width)
        for feat, (height, width) in zip(vision_feats, feat_sizes)
    ]
    return Sam2Features(image_embed=levels[-1], high_res_feats=levels[:-1])


@torch.inference_mode()
def decode_prompts(
    model: torch.nn.Module,
    features: Sam2Features,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    multimask_output: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts against one image's features, or against N images' features.

    Args:
        model: the SAM2 model.
        features: one image's features (batch dimension 1), shared by all
            prompts; or N entries, one per prompt (:meth:`Sam2Features.take`).
        point_coords: ``[N, P, 2]`` (x, y) in the model's input pixel frame.
            Boxes are two points labelled 2 and 3 (top-left, bottom-right).
        point_labels: ``[N, P]`` labels (1 positive, 0 negative, 2/3 box corners).
        multimask_output: three masks per prompt instead of one.

    The mask decoder runs in the dtype of its weights, outside autocast
    (:func:`labeler.models.speedups.decoder_in_dtype`): under autocast its
    layer norms and residual adds would keep every prompt's copy of the
    image tokens in float32.

    Returns:
        ``low_res_logits [N, K, S/4, S/4]`` and ``iou_predictions [N, K]``,
        with K = 3 or 1, in the decoder's dtype.
    """
    sparse, dense = model.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
    dtype = next(model.sam_mask_decoder.parameters()).dtype
    with torch.autocast(point_coords.device.type, enabled=False):
        low_res, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=features.image_embed.to(dtype),
            image_pe=model.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse.to(dtype),
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=multimask_output,
            repeat_image=features.image_embed.shape[0] != point_coords.shape[0],
            high_res_features=[level.to(dtype) for level in features.high_res_feats],
        )
    return low_res, iou


def box_prompts(boxes_xyxy: torch.Tensor, image_hw: tuple[int, int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in original pixels to SAM2 box prompts in the ``size`` input frame."""
    height, width = image_hw
    scale = torch.tensor([size / width, size / height], dtype=torch.float32, device=boxes_xyxy.device)
    coords = boxes_xyxy.float().reshape(-1, 2, 2) * scale
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=boxes_xyxy.device).repeat(coords.shape[0], 1)
    return coords, labels


@torch.inference_mode()
def point_proposals(
    decoder: ProposalDecoder,
    features: Sam2Features,
    points: list[torch.Tensor],
    points_per_batch: int,
    pred_iou_thr: float,
    fixed_batch: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """docs/method.md section 2 for a batch of images: prompt every point (one positive
    point each), keep the best of the three masks per point and the proposals
    whose predicted IoU passes ``pred_iou_thr`` and whose mask is not empty.

    The prompts of all images are decoded in batches of ``points_per_batch`` by
    :class:`labeler.models.sam2_decoder.ProposalDecoder` (SAM2's mask decoder
    without the work whose result is not used): a batch within one image
    broadcasts that image's tensors; a batch spanning images, as with small
    grids, takes one copy of them per prompt.

    Args:
        decoder: the SAM2 model's proposal decoder.
        features: the batch's encoder features.
        points: per image, ``[N_i, 2]`` prompt points in the input frame.
        points_per_batch: prompts decoded together.
        pred_iou_thr: predicted-IoU threshold.
        fixed_batch: pad the last batch to ``points_per_batch`` prompts, so
            every transformer call has one shape (for ``torch.compile``).

    Returns:
        Per image, ``[P, h, w]`` float32 low-res logits and ``[P]`` predicted
        IoUs of the kept proposals, in prompt order.
    """
    device = features.image_embed.device
    sizes = [int(p.shape[0]) for p in points]
    image_of = np.repeat(np.arange(len(points)), sizes)
    coords = torch.cat([p.to(device, torch.float32) for p in points]) if points else torch.zeros(0, 2, device=device)
    state = decoder.image_state(features.image_embed, features.high_res_feats)
    kept_logits, kept_iou, kept_image = [], [], []
    for start in range(0, coords.shape[0], points_per_batch):
        batch_points = coords[start : start + points_per_batch]
        batch_images = image_of[start : start + points_per_batch]
        real = batch_points.shape[0]
        if fixed_batch and real < points_per_batch:
            batch_points = torch.cat([batch_points, batch_points[-1:].expand(points_per_batch - real, 2)])
            batch_images = np.concatenate([batch_images, np.repeat(batch_images[-1:], points_per_batch - real)])
        images = torch.from_numpy(batch_images).to(device)
        one_image = batch_images[0] == batch_images[-1]
        batch_state = state.select(int(batch_images[0])) if one_image else state
        labels = torch.ones(batch_points.shape[0], 1, dtype=torch.int32, device=device)
        sparse, _ = decoder.prompt_encoder(points=(batch_points[:, None, :], labels), boxes=None, masks=None)
        with torch.autocast(device.type, enabled=False):
            src, iou, hyper = decoder.tokens(batch_state, sparse, None if one_image else images)
            best = iou[:real].argmax(dim=1)
            rows = torch.arange(real, device=device)
            best_iou = iou[rows, best]
            passing = (best_iou > pred_iou_thr).nonzero()[:, 0]
            if passing.numel() == real:  # every prompt passes: no copy of their image tokens
                src, passing = src[:real], rows
            else:
                src = src.index_select(0, passing)
            logits = decoder.upscale(batch_state, src, hyper[passing, best[passing]],
                                     None if one_image else images[passing]) if passing.numel() else None
        if logits is None:
            continue
        keep = keep_proposals(logits, best_iou[passing], pred_iou_thr)
        kept = passing[keep]
        kept_logits.append(logits[keep].float())
        kept_iou.append(best_iou[kept].float())
        kept_image.append(images[kept])
    if not kept_logits:
        height, width = decoder.prompt_encoder.mask_input_size
        return [(torch.zeros(0, height, width, device=device), torch.zeros(0, device=device)) for _ in points]
    logits, iou, image = torch.cat(kept_logits), torch.cat(kept_iou), torch.cat(kept_image)
    per_image = torch.bincount(image, minlength=len(points)).tolist()
    return list(zip(logits.split(per_image), iou.split(per_image)))
