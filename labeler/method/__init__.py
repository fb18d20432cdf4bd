"""The method as pure torch functions on tensors: no Ray, no I/O.

docs/method.md describes the method; each module implements one stage.
"""
