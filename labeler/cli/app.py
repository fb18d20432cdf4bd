"""The typer application, its global options (``--debug``, ``--verbose``, ``--version``) and the entry point."""

from __future__ import annotations

import logging
import sys

import typer

from labeler.errors import LabelerError

app = typer.Typer(
    name="labeler",
    help="Training-free instance-mask labelling from a few reference examples (SAM2 + DINOv2, Ray Data).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags, no boxes in job logs
)

#: ``--debug`` of this invocation: tracebacks for errors, Ray's own messages in the terminal.
state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from labeler import __version__

        typer.echo(f"labeler {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` defaults to the process arguments.

    User errors and failures of the storage (a full disk, an unreachable
    endpoint) print one line and exit with status 2; ``--debug`` shows them
    with their traceback.
    """
    from labeler.io.storage import describe_storage_error, storage_errors

    try:
        app(args=argv)
    except LabelerError as error:
        if state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except storage_errors() as error:
        if state["debug"]:
            raise
        typer.echo(f"error: storage: {describe_storage_error(error)}", err=True)
        sys.exit(2)
