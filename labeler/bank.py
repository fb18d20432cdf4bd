"""The prototype bank: one safetensors file (METHOD.md section 1).

Tensors:
    ``class_prototypes``    ``[C, D]`` float32, unit norm, in category order
    ``instance_prototypes`` ``[N, D]`` float32, mask-weighted mean features
    ``instance_class``      ``[N]`` int64, row of each instance's class

Metadata (safetensors string metadata): ``format`` (marker), ``format_version``,
and ``bank``: a JSON object with categories, the encoder spec, feature dim,
input size, context ratio, reference annotation ids, sampling settings, the
labeler version and ``content_hash`` (SHA-256 over the tensors and the rest of
the metadata), checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from labeler import __version__
from labeler.errors import BankError
from labeler.io import storage
from labeler.io.coco import Category

FORMAT_MARKER = "labeler-prototype-bank"
FORMAT_VERSION = 1


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
    content_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.validate()
        if not self.content_hash:
            self.content_hash = self._compute_hash()

    @property
    def feature_dim(self) -> int:
        return int(self.class_prototypes.shape[1])

    @property
    def category_ids(self) -> list[int]:
        return [category.id for category in self.categories]

    def shots_per_class(self) -> dict[int, int]:
        """Category id -> number of instance prototypes."""
        counts = torch.bincount(self.instance_class, minlength=len(self.categories)).tolist()
        return {category.id: count for category, count in zip(self.categories, counts)}

    def similarity(self) -> torch.Tensor:
        """``[C, C]`` cosine similarity between class prototypes."""
        return self.class_prototypes @ self.class_prototypes.T

    def validate(self, where: str = "bank") -> None:
        """Check shapes, dtypes and cross-references; raise :class:`BankError`."""
        classes, instances = self.class_prototypes, self.instance_prototypes
        if classes.dim() != 2 or instances.dim() != 2 or classes.shape[1] != instances.shape[1]:
            raise BankError(f"{where}: prototype shapes {tuple(classes.shape)} and {tuple(instances.shape)} disagree")
        if classes.shape[0] != len(self.categories) or classes.shape[0] == 0:
            raise BankError(f"{where}: {classes.shape[0]} class prototypes for {len(self.categories)} categories")
        if self.instance_class.shape != (instances.shape[0],) or len(self.annotation_ids) != instances.shape[0]:
            raise BankError(f"{where}: instance rows, classes and annotation ids disagree in number")
        if instances.shape[0] and (self.instance_class.min() < 0 or self.instance_class.max() >= classes.shape[0]):
            raise BankError(f"{where}: instance class index out of range")
        if not torch.isfinite(classes).all() or not torch.isfinite(instances).all():
            raise BankError(f"{where}: prototypes hold NaN or infinite values")

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "class_prototypes": self.class_prototypes.float().contiguous(),
            "instance_prototypes": self.instance_prototypes.float().contiguous(),
            "instance_class": self.instance_class.long().contiguous(),
        }

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


def load_bank(uri: str) -> PrototypeBank:
    """Load and validate a bank from a path or fsspec URI.

    Raises:
        BankError: not a safetensors file, not a bank, truncated or corrupt
            (content hash mismatch), or written by a newer format version.
    """
    data = storage.read_bytes(uri)
    with tempfile.TemporaryDirectory(prefix="labeler-bank-") as folder:
        local = os.path.join(folder, "bank.safetensors")
        with open(local, "wb") as handle:
            handle.write(data)
        try:
            with safe_open(local, framework="pt") as reader:
                metadata = reader.metadata() or {}
                names = set(reader.keys())
                tensors = {name: reader.get_tensor(name) for name in names}
        except (SafetensorError, OSError, ValueError) as error:
            raise BankError(f"{uri}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT_MARKER:
        raise BankError(f"{uri}: a safetensors file, but not a labeler prototype bank")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise BankError(f"{uri}: bad format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise BankError(f"{uri}: bank format {version} is newer than this labeler reads ({FORMAT_VERSION}); upgrade labeler")
    required = {"class_prototypes", "instance_prototypes", "instance_class"}
    if not required <= names:
        raise BankError(f"{uri}: missing tensors {sorted(required - names)}")
    try:
        description = json.loads(metadata["bank"])
        bank = PrototypeBank(
            class_prototypes=tensors["class_prototypes"],
            instance_prototypes=tensors["instance_prototypes"],
            instance_class=tensors["instance_class"],
            categories=[Category(id=int(c["id"]), name=str(c["name"])) for c in description["categories"]],
            encoder=str(description["encoder"]),
            input_size=int(description["input_size"]),
            context_ratio=float(description["context_ratio"]),
            annotation_ids=[int(a) for a in description["annotation_ids"]],
            sampling=description.get("sampling"),
            labeler_version=str(description["labeler_version"]),
        )
    except BankError as error:
        raise BankError(f"{uri}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise BankError(f"{uri}: malformed bank metadata ({type(error).__name__}: {error})") from None
    if bank.content_hash != description.get("content_hash"):
        raise BankError(f"{uri}: content hash mismatch: the file is corrupt or was edited")
    return bank
