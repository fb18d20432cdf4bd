"""Ray Data stages of ``labeler run``: callables usable with or without Ray.

Each takes and returns a batch (a dict of numpy arrays, or an Arrow table
for the final stage) and is a thin wrapper over the pure functions of
:mod:`labeler.method` and :mod:`labeler.models`.
"""
