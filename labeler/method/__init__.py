"""The method as pure torch functions on tensors: no Ray, no I/O.

See ../shared/METHOD.md; each module implements one stage.
"""
