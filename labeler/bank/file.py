"""The prototype bank: one safetensors file (docs/method.md section 1; its tensors and metadata in
docs/formats.md, "Prototype bank"), with a content hash over both, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from labeler import __version__
from labeler.errors import BankError, LabelerError
from labeler.io import markers, storage
from labeler.io.coco import Category, check_class_names

FORMAT_MARKER = markers.BANK
FORMAT_VERSION = 1
#: Encoder input sides a bank may record (DINOv2 patches are 14 px; 518 is the default).
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 14, 2048
MAX_CONTEXT_RATIO = 10.0
INT64_RANGE = range(-(1 << 63), 1 << 63)
#: A safetensors header larger than this is not a bank's.
MAX_HEADER_BYTES = 100 << 20


@dataclass
class PrototypeBank:
    """Class and instance prototypes with what is needed to use them.

    Attributes:
        class_prototypes: ``[C, D]`` unit-norm class prototypes.
        instance_prototypes: ``[N, D]`` instance prototypes.
        instance_class: ``[N]`` row in ``categories`` of each instance.
        categories: the reference set's categories, in prototype row order.
        encoder: the DINOv2 spec the features came from.
        input_size: encoder input side in pixels.
        context_ratio: crop context used for the references.
        annotation_ids: reference annotation id of each instance row.
        sampling: ``{"shots": K, "seed": S}`` when K-shot sampling was used.
        labeler_version: version of labeler that built the bank.
        negative_prototypes: ``[M, D]`` instance prototypes of negative references
            ("not this"), none by default.
        negative_class: ``[M]`` row in ``categories`` each negative is a "not" of.
        negative_annotation_ids: reference annotation id of each negative row.
    """

    class_prototypes: torch.Tensor
    instance_prototypes: torch.Tensor
    instance_class: torch.Tensor
    categories: list[Category]
    encoder: str
    input_size: int
    context_ratio: float
    annotation_ids: list[int]
    sampling: dict[str, int] | None = None
    labeler_version: str = __version__
    negative_prototypes: torch.Tensor | None = None
    negative_class: torch.Tensor | None = None
    negative_annotation_ids: list[int] = field(default_factory=list)
    content_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.negative_prototypes is None:
            self.negative_prototypes = torch.zeros(0, self.class_prototypes.shape[-1])
            self.negative_class = torch.zeros(0, dtype=torch.long)
        self.validate()
        if not self.content_hash:
            self.content_hash = self._compute_hash()

    @property
    def feature_dim(self) -> int:
        return int(self.class_prototypes.shape[1])

    @property
    def category_ids(self) -> list[int]:
        return [category.id for category in self.categories]

    @property
    def has_negatives(self) -> bool:
        return int(self.negative_prototypes.shape[0]) > 0

    def without_negatives(self) -> PrototypeBank:
        """The same bank with no negative reference (what ``labeler estimate`` compares with)."""
        return PrototypeBank(self.class_prototypes, self.instance_prototypes, self.instance_class, self.categories,
                             self.encoder, self.input_size, self.context_ratio, self.annotation_ids, self.sampling,
                             self.labeler_version)

    def negatives_per_class(self) -> dict[int, int]:
        """Category id -> number of negative references."""
        counts = torch.bincount(self.negative_class, minlength=len(self.categories)).tolist()
        return {category.id: count for category, count in zip(self.categories, counts)}

    def shots_per_class(self) -> dict[int, int]:
        """Category id -> number of instance prototypes."""
        counts = torch.bincount(self.instance_class, minlength=len(self.categories)).tolist()
        return {category.id: count for category, count in zip(self.categories, counts)}

    def similarity(self) -> torch.Tensor:
        """``[C, C]`` cosine similarity between class prototypes."""
        return self.class_prototypes @ self.class_prototypes.T

    def validate(self) -> None:
        """Check shapes, ranges and cross-references; raise :class:`BankError` saying what is wrong."""
        classes, instances = self.class_prototypes, self.instance_prototypes
        if classes.dim() != 2 or instances.dim() != 2 or classes.shape[1] != instances.shape[1]:
            raise BankError(f"prototype shapes {tuple(classes.shape)} and {tuple(instances.shape)} disagree")
        if classes.shape[0] != len(self.categories) or classes.shape[0] == 0:
            raise BankError(f"{classes.shape[0]} class prototypes for {len(self.categories)} categories")
        if self.instance_class.shape != (instances.shape[0],) or len(self.annotation_ids) != instances.shape[0]:
            raise BankError("instance rows, classes and annotation ids disagree in number")
        if instances.shape[0] and (self.instance_class.min() < 0 or self.instance_class.max() >= classes.shape[0]):
            raise BankError("instance class index out of range")
        if not torch.isfinite(classes).all() or not torch.isfinite(instances).all():
            raise BankError("prototypes hold NaN or infinite values")
        ids = [category.id for category in self.categories]
        if any(isinstance(i, bool) or not isinstance(i, int) or i not in INT64_RANGE for i in ids):
            raise BankError(f"category ids must be 64-bit integers, got {ids[:5]}")
        if len(set(ids)) != len(ids):
            raise BankError("duplicate category ids")
        try:
            check_class_names(self.categories, "bank")
        except LabelerError as error:
            raise BankError(str(error)) from None
        if any(isinstance(a, bool) or not isinstance(a, int) or a not in INT64_RANGE for a in self.annotation_ids):
            raise BankError("annotation ids must be 64-bit integers")
        if not (isinstance(self.input_size, int) and MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE):
            raise BankError(f"input_size {self.input_size!r} is not in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}]")
        if not (math.isfinite(self.context_ratio) and 0.0 <= self.context_ratio <= MAX_CONTEXT_RATIO):
            raise BankError(f"context_ratio {self.context_ratio!r} is not in [0, {MAX_CONTEXT_RATIO:g}]")
        if not self.encoder:
            raise BankError("no encoder spec")
        negatives = self.negative_prototypes
        if negatives.dim() != 2 or negatives.shape[1] != classes.shape[1]:
            raise BankError(f"negative prototypes of shape {tuple(negatives.shape)} for {classes.shape[1]}-d features")
        if self.negative_class.shape != (negatives.shape[0],) or len(self.negative_annotation_ids) != negatives.shape[0]:
            raise BankError("negative rows, classes and annotation ids disagree in number")
        if negatives.shape[0] and (self.negative_class.min() < 0 or self.negative_class.max() >= classes.shape[0]):
            raise BankError("negative class index out of range")
        if not torch.isfinite(negatives).all():
            raise BankError("negative prototypes hold NaN or infinite values")
        if any(isinstance(a, bool) or not isinstance(a, int) or a not in INT64_RANGE
               for a in self.negative_annotation_ids):
            raise BankError("negative annotation ids must be 64-bit integers")

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "class_prototypes": self.class_prototypes.float().contiguous(),
            "instance_prototypes": self.instance_prototypes.float().contiguous(),
            "instance_class": self.instance_class.long().contiguous(),
        }
        if self.has_negatives:  # a bank without negatives is the file it always was
            tensors["negative_prototypes"] = self.negative_prototypes.float().contiguous()
            tensors["negative_class"] = self.negative_class.long().contiguous()
        return tensors

    def _description(self) -> dict[str, Any]:
        return {
            "categories": [{"id": c.id, "name": c.name} for c in self.categories],
            "encoder": self.encoder,
            "feature_dim": self.feature_dim,
            "input_size": self.input_size,
            "context_ratio": self.context_ratio,
            "annotation_ids": list(self.annotation_ids),
            "sampling": self.sampling,
            "labeler_version": self.labeler_version,
            **({"negative_annotation_ids": list(self.negative_annotation_ids)} if self.has_negatives else {}),
        }

    def _compute_hash(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self._tensors().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.cpu().numpy().tobytes())
        digest.update(json.dumps(self._description(), sort_keys=True).encode())
        return digest.hexdigest()

    def to_bytes(self) -> bytes:
        """Serialise to safetensors bytes."""
        description = dict(self._description(), content_hash=self.content_hash)
        metadata = {
            "format": FORMAT_MARKER,
            "format_version": str(FORMAT_VERSION),
            "bank": json.dumps(description, sort_keys=True),
        }
        return save(self._tensors(), metadata=metadata)

    def save(self, uri: str) -> None:
        """Write the bank to a path or fsspec URI, atomically."""
        storage.write_bytes_atomic(uri, self.to_bytes())


def _safetensors_metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes: an 8-byte little-endian header
    length, then that many bytes of JSON (the format's specification)."""
    if len(data) < 8:
        raise BankError(f"{where}: not a readable safetensors file (only {len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise BankError(f"{where}: not a readable safetensors file (header of {length} bytes)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError):
        raise BankError(f"{where}: not a readable safetensors file (header is not JSON)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def bank_from_bytes(data: bytes, where: str = "bank") -> PrototypeBank:
    """Parse and validate bank file bytes; ``where`` names them in errors.

    Raises:
        BankError: not a safetensors file, not a bank, truncated or corrupt
            (content hash mismatch), metadata out of range, or written by a
            newer format version.
    """
    metadata = _safetensors_metadata(data, where)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise BankError(f"{where}: not a readable safetensors file ({error})") from None
    names = set(tensors)
    if metadata.get("format") != FORMAT_MARKER:
        raise BankError(f"{where}: a safetensors file, but not a labeler prototype bank")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise BankError(f"{where}: bad format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise BankError(f"{where}: bank format {version} is newer than this labeler reads ({FORMAT_VERSION}); upgrade labeler")
    required = {"class_prototypes", "instance_prototypes", "instance_class"}
    if not required <= names:
        raise BankError(f"{where}: missing tensors {sorted(required - names)}")
    if ("negative_prototypes" in names) != ("negative_class" in names):
        raise BankError(f"{where}: negative prototypes and their classes must come together")
    try:
        description = json.loads(metadata["bank"])
        bank = PrototypeBank(
            class_prototypes=tensors["class_prototypes"],
            instance_prototypes=tensors["instance_prototypes"],
            instance_class=tensors["instance_class"],
            categories=[Category(id=_integer(c["id"]), name=str(c["name"])) for c in description["categories"]],
            encoder=str(description["encoder"]),
            input_size=_integer(description["input_size"]),
            context_ratio=float(description["context_ratio"]),
            annotation_ids=[_integer(a) for a in description["annotation_ids"]],
            sampling=description.get("sampling"),
            labeler_version=str(description["labeler_version"]),
            negative_prototypes=tensors.get("negative_prototypes"),
            negative_class=tensors.get("negative_class"),
            negative_annotation_ids=[_integer(a) for a in description.get("negative_annotation_ids", [])],
        )
    except BankError as error:
        raise BankError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise BankError(f"{where}: malformed bank metadata ({type(error).__name__}: {error})") from None
    if bank.content_hash != description.get("content_hash"):
        raise BankError(f"{where}: content hash mismatch: the file is corrupt or was edited")
    return bank


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


def load_bank(uri: str) -> PrototypeBank:
    """Load and validate a bank from a path or fsspec URI (:func:`bank_from_bytes`)."""
    return bank_from_bytes(storage.read_bytes(uri), uri)


@dataclass(frozen=True)
class BankFile:
    """A bank file's bytes and the content hash checked when it was read.

    This is what model actors get: the very bytes the run validated, never a
    path to read again, so a bank rebuilt in place during a run cannot reach
    them (and workers need no access to the bank's path).
    """

    data: bytes = field(repr=False)
    content_hash: str
    source: str

    @classmethod
    def read(cls, uri: str) -> BankFile:
        """Read and validate the bank at ``uri`` (:func:`bank_from_bytes`)."""
        data = storage.read_bytes(uri)
        return cls(data, bank_from_bytes(data, uri).content_hash, uri)

    def load(self) -> PrototypeBank:
        """The bank; it must still be the one whose hash was checked."""
        bank = bank_from_bytes(self.data, self.source)
        if bank.content_hash != self.content_hash:
            raise BankError(f"{self.source}: content hash {bank.content_hash[:12]} is not the checked {self.content_hash[:12]}")
        return bank
