"""The state of a run's output folder (OUT): its layout, ownership and lock, the stored listing, the label shards and their index, the merged COCO file, and the readers of a finished run."""
