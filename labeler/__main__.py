"""``python -m labeler``: the command line (:mod:`labeler.cli`)."""

from labeler.cli import main

if __name__ == "__main__":
    main()
