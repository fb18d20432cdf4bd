"""``labeler build-bank``: reference images + COCO annotations -> prototype bank.

docs/method.md section 1: masks from the annotations (or from SAM2 prompted with
the box), context crops, DINOv2 patch features, mask-weighted pooling into
instance prototypes, and their normalised means as class prototypes. Annotations
marked ``"negative": true`` are pooled the same way into negative prototypes
("not this" of their class; docs/method.md, "Negative references").
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from labeler.bank.file import MAX_CONTEXT_RATIO, PrototypeBank
from labeler.devices import resolve_device
from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import CocoAnnotation, CocoDataset, CocoImage, check_class_names, read_coco
from labeler.io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image, resize_square
from labeler.io.masks import box_to_mask, segmentation_to_mask
from labeler.method import defaults
from labeler.method.crops import context_crop_box, crop_reference
from labeler.method.proposals import upsample_logits
from labeler.method.prototypes import EmptyWeightsError, class_prototypes, instance_prototypes
from labeler.method.sampling import Candidate, NotEnoughShotsError, sample_shots
from labeler.models import Dinov2Encoder, load_dinov2, load_sam2
from labeler.models.sam2_inference import box_prompts, decode_prompts, encode_images, sam2_input

log = logging.getLogger(__name__)


@dataclass
class _Reference:
    """One reference instance ready for the encoder."""

    annotation: CocoAnnotation
    crop: torch.Tensor  # [3, input_size, input_size], floats on the 0..1 scale
    weights: torch.Tensor  # [grid, grid]


def select_annotations(dataset: CocoDataset, shots: int | None, seed: int) -> list[CocoAnnotation]:
    """The positive reference annotations to use: all non-crowd ones, or K per class (negatives apart).

    Raises:
        LabelerError: a category has no usable reference, or too few for K shots.
    """
    usable = [a for a in dataset.annotations if not a.iscrowd and not a.negative]
    category_ids = sorted(dataset.categories)
    if shots is not None:
        if shots < 1:
            raise LabelerError(f"--shots must be at least 1, got {shots}")
        if seed < 0:
            raise LabelerError(f"--seed must be non-negative, got {seed}")
        candidates = [
            Candidate(a.id, a.image_id, a.category_id, a.bbox, _image_hw(dataset, dataset.images[a.image_id]))
            for a in usable
        ]
        try:
            chosen = sample_shots(candidates, category_ids, shots, seed)
        except NotEnoughShotsError as error:
            name = dataset.categories[error.category_id].name
            raise LabelerError(
                f"category {error.category_id} ({name}): only {error.available} usable references for "
                f"--shots {shots} (crowd, boxes under 32 px and boxes within 10 px of the border are skipped; "
                "one per image)"
            ) from None
        wanted = {annotation_id for ids in chosen.values() for annotation_id in ids}
        usable = [a for a in usable if a.id in wanted]
    present = {a.category_id for a in usable}
    for category_id in category_ids:
        if category_id not in present:
            name = dataset.categories[category_id].name
            raise LabelerError(f"{dataset.source}: category {category_id} ({name}) has no reference annotation")
    return sorted(usable, key=lambda a: (a.category_id, a.id))


def _image_hw(dataset: CocoDataset, image: CocoImage) -> tuple[int, int]:
    if image.width is None or image.height is None:
        raise LabelerError(f"{dataset.source}: image {image.id} needs 'width' and 'height' for --shots sampling")
    return image.height, image.width


def _read_reference_image(dataset: CocoDataset, image: CocoImage, images_root: str, max_pixels: int) -> np.ndarray:
    uri = storage.join_under(images_root, image.file_name, what=f"{dataset.source}: image {image.id}")
    try:
        pixels = read_image(uri, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise LabelerError(f"{uri}: {error}") from None
    except (*storage.PERMANENT_ERRORS, storage.ReadRefusedError) as error:
        raise LabelerError(f"{uri}: {storage.describe_read_error(error)}") from None
    height, width = pixels.shape[:2]
    if (image.width, image.height) not in {(None, None), (width, height)}:
        raise LabelerError(
            f"{uri}: decoded size {width}x{height} (after EXIF orientation) differs from "
            f"{image.width}x{image.height} in {dataset.source}"
        )
    return pixels


class _BoxMasker:
    """SAM2 prompted with boxes, loaded on first use only."""

    def __init__(self, spec: str, device: torch.device):
        self.spec = spec
        self.device = device
        self._model: torch.nn.Module | None = None

    def masks(self, pixels: torch.Tensor, boxes: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
        if self._model is None:
            log.info("loading SAM2 %s for box-only references", self.spec)
            self._model = load_sam2(self.spec, self.device)
        model = self._model
        height, width = pixels.shape[1:]
        resized = resize_square(pixels.permute(1, 2, 0).numpy(), model.image_size)
        # Box prompts as SAM2's own image predictor makes them (the reference has no box-only references).
        features = encode_images(model, sam2_input(resized[None], self.device), add_no_mem_embed=True)
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], device=self.device)
        coords, labels = box_prompts(xyxy, (height, width), model.image_size)
        low_res, _ = decode_prompts(model, features, coords, labels, multimask_output=False)
        full = upsample_logits(low_res, (height, width))[:, 0] > 0
        return [mask.cpu().numpy().astype(np.uint8) for mask in full]


def _reference_masks(
    dataset: CocoDataset,
    annotations: list[CocoAnnotation],
    pixels: np.ndarray,
    masker: _BoxMasker,
) -> list[np.ndarray]:
    height, width = pixels.shape[:2]
    masks: dict[int, np.ndarray] = {}
    box_only = [a for a in annotations if not a.has_mask]
    for annotation in annotations:
        where = f"{dataset.source}: annotation {annotation.id}"
        if annotation.bbox[2] <= 0 or annotation.bbox[3] <= 0:
            raise LabelerError(f"{where}: box {list(annotation.bbox)} has zero area")
        if annotation.has_mask:
            masks[annotation.id] = segmentation_to_mask(annotation.segmentation, height, width, where=where)
    if box_only:
        predicted = masker.masks(torch.from_numpy(pixels).permute(2, 0, 1), [a.bbox for a in box_only])
        for annotation, mask in zip(box_only, predicted):
            if not mask.any():
                log.warning(
                    "%s: annotation %d: SAM2 returned an empty mask for its box; using the filled box",
                    dataset.source, annotation.id,
                )
                mask = box_to_mask(annotation.bbox, height, width)
            masks[annotation.id] = mask
    for annotation in annotations:
        if not masks[annotation.id].any():
            raise LabelerError(f"{dataset.source}: annotation {annotation.id}: empty mask (zero area)")
    return [masks[a.id] for a in annotations]


def _references(
    dataset: CocoDataset,
    annotations: list[CocoAnnotation],
    images_root: str,
    encoder: Dinov2Encoder,
    masker: _BoxMasker,
    context_ratio: float,
    max_pixels: int,
) -> Iterator[_Reference]:
    """Crops and weight maps, one image decoded at a time."""
    by_image: dict[int, list[CocoAnnotation]] = defaultdict(list)
    for annotation in annotations:
        by_image[annotation.image_id].append(annotation)
    for image_id in sorted(by_image):
        image = dataset.images[image_id]
        pixels = _read_reference_image(dataset, image, images_root, max_pixels)
        masks = _reference_masks(dataset, by_image[image_id], pixels, masker)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)
        for annotation, mask in zip(by_image[image_id], masks):
            box = context_crop_box(annotation.bbox, pixels.shape[:2], context_ratio)
            crop, weights = crop_reference(tensor, torch.from_numpy(mask), box, encoder.input_size, encoder.grid_size)
            yield _Reference(annotation=annotation, crop=crop, weights=weights)


def _pool(dataset: CocoDataset, encoder: Dinov2Encoder, batch: list[_Reference]) -> torch.Tensor:
    features = encoder.patch_features(torch.stack([r.crop for r in batch]))
    weights = torch.stack([r.weights for r in batch]).to(features.device)
    try:
        return instance_prototypes(features, weights).cpu()
    except EmptyWeightsError as error:
        annotation = batch[error.indices[0]].annotation
        raise LabelerError(
            f"{dataset.source}: annotation {annotation.id}: its mask vanishes on the "
            f"{encoder.grid_size}x{encoder.grid_size} feature grid (too thin or too small for its crop)"
        ) from None


def build_bank(
    refs: str,
    images_root: str,
    *,
    dinov2: str = defaults.DINOV2,
    sam2: str = defaults.SAM2,
    shots: int | None = None,
    seed: int = 0,
    context_ratio: float = defaults.CONTEXT_RATIO,
    device: str = "auto",
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PrototypeBank:
    """Build a prototype bank from COCO reference annotations.

    Args:
        refs: COCO JSON (path or fsspec URI) of the reference images.
        images_root: folder or prefix the ``file_name``s are relative to.
        dinov2: DINOv2 model spec (recorded in the bank).
        sam2: SAM2 model spec, loaded only if some reference is box-only.
        shots: K instances per class drawn with ``seed``; all when None.
        seed: sampling seed.
        context_ratio: crop context around each instance.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: crops per DINOv2 forward pass.
        max_pixels: pixel limit for reference images.

    Raises:
        LabelerError: any problem with the inputs, naming the file and item.
    """
    if not (math.isfinite(context_ratio) and 0 <= context_ratio <= MAX_CONTEXT_RATIO):
        raise LabelerError(f"--context-ratio must be in [0, {MAX_CONTEXT_RATIO:g}], got {context_ratio}")
    if batch_size < 1:
        raise LabelerError(f"--batch-size must be at least 1, got {batch_size}")
    dataset = read_coco(refs)
    if not dataset.categories:
        raise LabelerError(f"{refs}: no categories")
    check_class_names([dataset.categories[i] for i in sorted(dataset.categories)], refs)
    annotations = select_annotations(dataset, shots, seed)
    torch_device = resolve_device(device)
    encoder = load_dinov2(dinov2, torch_device)
    masker = _BoxMasker(sam2, torch_device)
    categories = [dataset.categories[i] for i in sorted(dataset.categories)]
    row_of = {category.id: row for row, category in enumerate(categories)}

    def pooled(chosen: list[CocoAnnotation]) -> tuple[torch.Tensor, list[CocoAnnotation]]:
        prototypes: list[torch.Tensor] = [torch.zeros(0, encoder.feature_dim)]
        pooled_annotations: list[CocoAnnotation] = []
        batch: list[_Reference] = []
        for reference in _references(dataset, chosen, images_root, encoder, masker, context_ratio, max_pixels):
            batch.append(reference)
            if len(batch) == batch_size:
                prototypes.append(_pool(dataset, encoder, batch))
                pooled_annotations += [r.annotation for r in batch]
                batch = []
        if batch:
            prototypes.append(_pool(dataset, encoder, batch))
            pooled_annotations += [r.annotation for r in batch]
        return torch.cat(prototypes), pooled_annotations

    instances, pooled_annotations = pooled(annotations)
    instance_class = torch.tensor([row_of[a.category_id] for a in pooled_annotations], dtype=torch.long)
    negatives, negative_annotations = pooled(sorted((a for a in dataset.annotations if a.negative and not a.iscrowd),
                                                    key=lambda a: (a.category_id, a.id)))
    return PrototypeBank(
        class_prototypes=class_prototypes(instances, instance_class, len(categories)),
        instance_prototypes=instances,
        instance_class=instance_class,
        categories=categories,
        encoder=dinov2,
        input_size=encoder.input_size,
        context_ratio=context_ratio,
        annotation_ids=[a.id for a in pooled_annotations],
        sampling={"shots": shots, "seed": seed} if shots is not None else None,
        negative_prototypes=negatives,
        negative_class=torch.tensor([row_of[a.category_id] for a in negative_annotations], dtype=torch.long),
        negative_annotation_ids=[a.id for a in negative_annotations],
    )
