"""The first step of the pipeline: a part of the stored listing -> the rows still to label."""

from __future__ import annotations

import numpy as np

from labeler.io import storage
from labeler.outdir.id_set import IdSet
from labeler.outdir.listing import read_part


def unfinished_rows(batch: dict[str, np.ndarray], *, done: IdSet, storage_options: dict | None = None
                    ) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: listing part URIs (column ``part``) ->
    their ``image_id, uri`` rows whose id is not in ``done``."""
    storage.configure(storage_options)
    ids, uris = [], []
    for part in batch["part"]:
        table = read_part(str(part))
        part_ids = table.column("image_id").to_numpy()
        todo = ~done.contains(part_ids)
        ids.append(part_ids[todo])
        uris.append(np.asarray(table.column("uri").to_numpy(zero_copy_only=False), dtype=object)[todo])
    return {"image_id": np.concatenate(ids) if ids else np.zeros(0, np.int64),
            "uri": np.concatenate(uris) if uris else np.zeros(0, dtype=object)}
