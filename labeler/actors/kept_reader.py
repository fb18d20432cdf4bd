"""The first step of ``labeler rescore``: one label shard of the rescored run -> its rows still to rescore, each
with its kept proposals (:mod:`labeler.io.kept_proposals`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.io import storage
from labeler.io.kept_proposals import KEPT_SCHEMA
from labeler.io.labels import STATUS_ERROR, STATUS_OK
from labeler.outdir.id_set import IdSet
from labeler.outdir.shards import kept_twin, read_kept_twin, read_shard
from labeler.run.progress import report

if TYPE_CHECKING:
    from ray.actor import ActorHandle

#: What a label row brings to the rescoring stage; the kept proposals' columns come beside them.
LABEL_COLUMNS = ["image_id", "uri", "width", "height", "status", "error", "transfer_bytes"]


def kept_rows(batch: dict[str, np.ndarray], *, pred: str, done: IdSet, storage_options: dict | None = None,
              tracker: ActorHandle | None = None) -> pa.Table:
    """The rows of the run ``pred``'s shards named in ``batch["shard"]`` whose image is not in ``done``, with
    their kept proposals. A shard whose kept proposals are missing gives error rows that say so."""
    storage.configure(storage_options)
    tables = []
    for shard in batch["shard"]:
        labels = read_shard(str(shard), LABEL_COLUMNS)
        kept = read_kept_twin(pred, str(shard))
        todo = pa.array(~done.contains(labels.column("image_id").to_numpy()))
        labels = labels.filter(todo)
        if kept is None:
            missing = f"kept proposals missing: {kept_twin(pred, str(shard))} is not there"
            ok = pc.equal(labels.column("status"), STATUS_OK)
            labels = labels.set_column(labels.schema.get_field_index("status"), "status",
                                       pc.if_else(ok, STATUS_ERROR, labels.column("status")))
            labels = labels.set_column(labels.schema.get_field_index("error"), "error",
                                       pc.if_else(ok, missing, labels.column("error")))
            kept = pa.table({name: pa.nulls(labels.num_rows, type=KEPT_SCHEMA.field(name).type)
                             for name in KEPT_SCHEMA.names if name != "image_id"})
        else:
            kept = kept.filter(todo).drop_columns(["image_id"])
        for name in kept.column_names:
            labels = labels.append_column(name, kept.column(name))
        tables.append(labels.replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    report(tracker, "read", table.num_rows)
    return table
