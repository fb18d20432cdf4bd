"""Model specs: the strings users pass to ``--sam2`` and ``--dinov2``.

A spec is one of

* ``random:<arch>``: the architecture with deterministic random weights,
  built offline (benchmarks use the real sizes, tests a tiny one);
* a Hugging Face hub id such as ``facebook/sam2.1-hiera-large``;
* a local path or fsspec URI: a SAM2 ``.pt`` checkpoint (optionally
  ``CKPT.pt?config=NAME`` to name its config) or a transformers model folder.

The spec string itself is what a bank and a run manifest record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from labeler.errors import ModelLoadError

SpecKind = Literal["random", "hub", "path"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_CONFIG_QUERY = re.compile(r"^(?P<path>.+?)\?config=(?P<config>[^?]+)$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        text: the spec as the user wrote it (recorded in banks and manifests).
        kind: ``random``, ``hub`` or ``path``.
        value: the architecture name, the hub id or the path/URI.
        config: for SAM2 checkpoints, the config name given with ``?config=``.
    """

    text: str
    kind: SpecKind
    value: str
    config: str | None = None


def parse_spec(text: str, *, local_exists: bool) -> ModelSpec:
    """Parse a model spec string.

    ``local_exists`` says whether ``text`` (without any ``?config=``) names an
    existing local path; a string that could be a hub id but exists on disk
    is a path, as in transformers.
    """
    text = text.strip()
    if not text:
        raise ModelLoadError("empty model spec")
    if text.startswith("random:"):
        arch = text.removeprefix("random:")
        if not arch:
            raise ModelLoadError(f"model spec {text!r}: name an architecture after 'random:'")
        return ModelSpec(text=text, kind="random", value=arch)
    match = _CONFIG_QUERY.match(text)
    path, config = (match["path"], match["config"]) if match else (text, None)
    if local_exists or "://" in path or path.startswith(("/", ".", "~")) or config:
        return ModelSpec(text=text, kind="path", value=path, config=config)
    if _HUB_ID.match(path):
        return ModelSpec(text=text, kind="hub", value=path)
    raise ModelLoadError(
        f"model spec {text!r}: not an existing path, a hub id (owner/name) or random:<arch>"
    )
