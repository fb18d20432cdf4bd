"""Tiled images in the SAM2 stage (``--tile``): a batch's tiles become rows of their own, so they are encoded
and decoded in batches, isolated one by one and sped up as any image is; their outcomes become one row per
image again, whose proposal payload holds every tile's (:func:`labeler.io.proposal_payload.join_payloads`)
and whose ``tiles`` column says where each tile is and which of the payload's proposals are its
(:data:`TILE_FIELDS`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from labeler.actors.decode import NO_PIXELS, pixel_column
from labeler.io.labels import STATUS_ERROR, STATUS_OK
from labeler.io.proposal_payload import (
    ProposalPayload,
    join_payloads,
    object_column,
    payload_columns,
    payload_from_columns,
)

#: The ``tiles`` column after the SAM2 stage: ``int32 [n, 6]`` per row, one line per tile (none for an image
#: labelled whole): its window in the image, and its proposals and band logits in the joined payload.
TILE_FIELDS = ("x0", "y0", "x1", "y1", "proposals", "band_logits")
NO_TILE_TABLE = np.zeros((0, len(TILE_FIELDS)), dtype=np.int32)
#: Per-model-input columns that become, in a tiled run, a stack per row (its tiles', or one for an image labelled
#: whole), and an error row's empty stack of the same rank and dtype.
_EMPTY_STACKS = {"sam2_pixels": np.zeros((0, 0, 0, 3), dtype=np.uint8),
                 "dino_features": np.zeros((0, 0, 0, 0), dtype=np.float16)}


def whole_inputs(column: np.ndarray, rows) -> np.ndarray:
    """``[len(rows), ...]``: the model inputs of images labelled whole from a tiled run's stacked column."""
    return np.stack([np.asarray(column[row])[0] for row in rows])


def tile_rows(batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """One row per model input (an image labelled whole, or one tile of a tiled image, whose width and height
    are the tile's), and the rows each image of ``batch`` became. ``batch`` is a tiled run's: each row's
    ``sam2_pixels`` are a stack (:mod:`labeler.actors.decode`)."""
    rows: dict[str, list] = {name: [] for name in ("image_id", "uri", "width", "height", "status", "error",
                                                   "sam2_pixels")}
    owned: list[list[int]] = []
    for index in range(len(batch["image_id"])):
        boxes = np.asarray(batch["tile_boxes"][index]).reshape(-1, 4)
        tiled = batch["status"][index] == STATUS_OK and len(boxes) > 0
        windows = boxes.tolist() if tiled else [None]
        owned.append(list(range(len(rows["image_id"]), len(rows["image_id"]) + len(windows))))
        for number, window in enumerate(windows):
            rows["image_id"].append(batch["image_id"][index])
            rows["uri"].append(batch["uri"][index])
            rows["status"].append(batch["status"][index])
            rows["error"].append(batch["error"][index])
            if window is None:
                rows["width"].append(batch["width"][index])
                rows["height"].append(batch["height"][index])
                stack = np.asarray(batch["sam2_pixels"][index])
                rows["sam2_pixels"].append(stack[0] if len(stack) else NO_PIXELS)
            else:
                rows["width"].append(window[2] - window[0])
                rows["height"].append(window[3] - window[1])
                rows["sam2_pixels"].append(np.asarray(batch["sam2_pixels"][index])[number])
    return {
        "image_id": np.asarray(rows["image_id"], dtype=np.int64),
        "uri": object_column(rows["uri"]),
        "width": np.asarray(rows["width"], dtype=np.int32),
        "height": np.asarray(rows["height"], dtype=np.int32),
        "status": object_column(rows["status"]),
        "error": object_column(rows["error"]),
        "sam2_pixels": pixel_column(rows["sam2_pixels"]),
    }, owned


def _chunks(rows: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    count = len(rows["image_id"])
    return [{name: column[start : start + size] for name, column in rows.items()} for start in range(0, count, size)]


def _tile_error(window: list[int], reason: str) -> str:
    return f"tile {window[0]},{window[1]}-{window[2]},{window[3]}: {reason}"


def propose_in_tiles(batch: dict[str, np.ndarray], propose: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                     tiles_per_batch: int, done: Callable[[int], None] = lambda tiles: None) -> dict[str, np.ndarray]:
    """``propose`` (the stage's work on a batch of model inputs) over the tiles of ``batch``, ``tiles_per_batch``
    at a time, calling ``done`` with each chunk's size; one row per image out, whose ``tiles`` column
    (:data:`TILE_FIELDS`) replaces the decoded ``tile_boxes``. A tiled image one of whose tiles fails is an
    error row naming the tile."""
    rows, owned = tile_rows(batch)
    outputs: dict[str, list] = {}
    for chunk in _chunks(rows, tiles_per_batch):
        for name, column in propose(chunk).items():
            outputs.setdefault(name, []).extend(list(column))
        done(len(chunk["image_id"]))
    stacked = [name for name in _EMPTY_STACKS if name in outputs]
    size = len(batch["image_id"])
    status, error = list(batch["status"]), list(batch["error"])
    images: dict[str, list] = {name: [] for name in stacked}
    payloads, tables = [], []
    for index in range(size):
        members = owned[index]
        windows = np.asarray(batch["tile_boxes"][index]).reshape(-1, 4).tolist()
        failed = [m for m in members if outputs["status"][m] != STATUS_OK]
        if failed:
            reason = str(outputs["error"][failed[0]])
            status[index] = STATUS_ERROR
            error[index] = _tile_error(windows[members.index(failed[0])], reason) if windows else reason
        if status[index] != STATUS_OK:
            payloads.append(ProposalPayload.empty())
            tables.append(NO_TILE_TABLE)
            for name in stacked:
                images[name].append(_EMPTY_STACKS[name])
            continue
        tile_payloads = [payload_from_columns(outputs, m) for m in members]
        if windows:
            payload, tile_proposals, tile_bands = join_payloads(tile_payloads)
            table = np.column_stack([windows, tile_proposals, tile_bands]).astype(np.int32)
            for name in stacked:
                images[name].append(np.stack([np.asarray(outputs[name][m]) for m in members]))
        else:
            payload, table = tile_payloads[0], NO_TILE_TABLE
            for name in stacked:
                images[name].append(np.asarray(outputs[name][members[0]])[None])
        payloads.append(payload)
        tables.append(table)
    result = {name: batch[name] for name in ("image_id", "uri", "width", "height")}
    result.update(status=object_column(status), error=object_column(error), tiles=object_column(tables))
    result.update({name: pixel_column(images[name]) for name in stacked})
    result.update(payload_columns(payloads))
    return result
