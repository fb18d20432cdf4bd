"""User-facing errors.

A :class:`LabelerError` is a problem with the user's input or configuration.
The CLI prints its message as one line and exits non-zero, without a
traceback unless ``--debug`` is given. Anything else is a bug and keeps its
traceback.
"""


class LabelerError(Exception):
    """A user error: bad input, bad configuration, a missing file."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`LabelerError` with the message of the first check that fails."""
    for ok, message in checks:
        if not ok:
            raise LabelerError(message)


class BankError(LabelerError):
    """A prototype-bank file that cannot be used (wrong file, corrupt, newer format)."""


class ModelLoadError(LabelerError):
    """A model spec that cannot be resolved or loaded."""
