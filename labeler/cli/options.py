"""Options declared once: a command's options are the fields of its config dataclass.

:func:`config_command` turns a table ``{field: Opt(help)}`` into a typer command
whose options are ``--field-name`` with the field's type and default, so a
default lives only in the dataclass and the CLI cannot drift from it. The
command's body receives the parsed values as one dict.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer


class _FromConfig:
    def __repr__(self) -> str:
        return "FROM_CONFIG"


#: Marks an option without a default of its own: the config field's is used.
FROM_CONFIG: Any = _FromConfig()


@dataclass(frozen=True)
class Opt:
    """One command-line option of a config field (or of the command alone, with ``type`` and ``default``)."""

    help: str
    flag: str | None = None  # default: --field-name
    type: Any = None  # what the shell passes, where the field holds something else (JSON text, "WxH")
    default: Any = FROM_CONFIG


def config_command(options: dict[str, Opt], *configs: type) -> Callable[[Callable[[dict[str, Any]], None]], Callable]:
    """Decorator: a typer command with ``options``; each takes type and default from the first of ``configs``
    with that field, a field without a default is a required option."""
    fields: dict[str, tuple[dataclasses.Field, Any]] = {}
    for config in reversed(configs):
        hints = typing.get_type_hints(config)
        fields.update({f.name: (f, hints[f.name]) for f in dataclasses.fields(config)})
    parameters = []
    for name, opt in options.items():
        field, hint = fields.get(name, (None, None))
        default = opt.default
        if default is FROM_CONFIG:
            if field is None:
                raise TypeError(f"option {name}: no config field and no default")
            default = ... if field.default is dataclasses.MISSING else field.default
        parameters.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=opt.type or hint,
            default=typer.Option(default, opt.flag or "--" + name.replace("_", "-"), help=opt.help),
        ))

    def wrap(body: Callable[[dict[str, Any]], None]) -> Callable:
        def command(**values: Any) -> None:
            body(values)

        command.__name__, command.__doc__ = body.__name__, body.__doc__
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return wrap


def fields_of(config: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``config``."""
    names = {f.name for f in dataclasses.fields(config)}
    return {name: value for name, value in values.items() if name in names}
