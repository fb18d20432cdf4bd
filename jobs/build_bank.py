"""``ray job submit --working-dir . -- python jobs/build_bank.py ARGS``: ``labeler build-bank`` on the cluster.

Takes exactly the options of ``labeler build-bank``; runs on the node the job
system picks (a GPU node when the cluster has one free).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir

from labeler.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["build-bank", *sys.argv[1:]])
