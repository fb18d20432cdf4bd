"""``ray job submit --working-dir . -- python jobs/run.py ARGS``: ``labeler run`` on the cluster.

Takes exactly the options of ``labeler run``; inside a Ray job it joins the
job's cluster (``RAY_ADDRESS``) instead of starting a local Ray.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir

from labeler.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
