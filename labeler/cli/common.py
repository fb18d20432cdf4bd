"""What every command shares: checks and set-up done before any heavy import (torch, Ray), the help
texts, the ``--debug`` state, and options declared once from config dataclasses.

:func:`config_command` turns a table ``{field: Opt(help)}`` into a typer command whose options are
``--field-name`` with the field's type and default, so a default lives only in the dataclass and the CLI
cannot drift from it; the command's body receives the parsed values as one dict.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import typer

from labeler.io.storage import check_output_folder

#: ``--debug`` of this invocation: tracebacks for errors, Ray's own messages in the terminal.
state = {"debug": False}

class Help:
    """Help texts several commands share."""

    STORAGE = ("fsspec options as JSON, by protocol ({\"s3\": {\"endpoint_url\": ...}}) or flat for s3; "
               "credentials are best left to the standard AWS chain.")
    DTYPE = "Model precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
    COMPILE = "torch.compile the networks (slow first batch, faster after)."
    MIN_SCORE = ("Keep detections scoring at least this: a number, class=value pairs with an optional default "
                 "(0.5,person=0.7), or a thresholds .json file.")
    CLASSES = "Keep only these classes: names or ids, comma-separated."
    PROMPTS = "grid: every grid point; matched: only the points most like a class prototype (faster)."
    DEVICE = "auto, cpu, cuda or cuda:N."
    DINOV2 = "DINOv2 spec: hub id, folder, random:<arch>."


def apply_storage_options(text: Optional[str]) -> Optional[dict]:
    """Parse ``--storage-options`` and apply it to this process."""
    from labeler.io import storage

    options = storage.parse_storage_options(text)
    storage.configure(options)
    return options


def job_paths(values: dict, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> dict:
    """``values`` with the paths named by ``inputs`` and ``outputs`` (option names as Python names) as the
    command must use them (:mod:`labeler.cli.job_paths`); local inputs must exist."""
    from labeler.cli.job_paths import require_local_inputs, resolve_for_job

    flag = {name: "--" + name.replace("_", "-") for name in (*inputs, *outputs)}
    resolved = resolve_for_job({flag[n]: values[n] for n in inputs}, {flag[n]: values[n] for n in outputs})
    require_local_inputs({flag[n]: resolved[flag[n]] for n in inputs})
    return {**values, **{name: resolved[flag[name]] for name in flag}}


def from_run(pred: str, out: str, **inputs: str | None) -> dict[str, str | None]:
    """The paths of a command that reads the run ``pred`` (and ``inputs``) and writes the folder ``out``, as it
    must use them (:func:`job_paths`); ``pred`` must be a finished run and ``out`` an output folder."""
    from labeler.run.manifest import read_manifest

    paths = job_paths(dict(pred=pred, out=out, **inputs), inputs=("pred", *inputs), outputs=("out",))
    read_manifest(paths["pred"])  # a finished run's folder
    check_output_folder(paths["out"], "--out")
    return paths


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
