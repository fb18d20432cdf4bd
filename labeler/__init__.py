"""labeler: training-free, reference-based instance-mask labelling.

The method ("No time to train!", Espinosa et al. 2025) lives in
:mod:`labeler.method` as pure torch functions; :mod:`labeler.bank.file` holds the
prototype bank; :mod:`labeler.bank.build` turns reference annotations into a
bank; the CLI in :mod:`labeler.cli` is a thin layer over these.
"""

__version__ = "0.1.0"
