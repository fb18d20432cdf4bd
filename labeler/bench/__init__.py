"""``labeler bench``: throughput per stage, the fast paths' equivalence to the plain fp32 path, and GPU-hour plans."""
