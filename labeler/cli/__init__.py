"""The ``labeler`` command line: a thin layer over the Python API, one module per group of commands.

Exit status: 0 done; 1 ``labeler run`` finished but labelled no image, or
more error images than ``--max-error-rate`` allows (its summary says why);
2 a user error (:class:`labeler.errors.LabelerError`: one line, ``--debug``
shows its traceback). Paths and arguments are checked before the heavy
libraries (torch, Ray) load, so a mistyped path is reported at once.
"""

from __future__ import annotations

import logging
import sys

import typer

from labeler.cli import bank, results, review, run, tools
from labeler.cli.common import state
from labeler.errors import LabelerError

app = typer.Typer(
    name="labeler",
    help="Training-free instance-mask labelling from a few reference examples (SAM2 + DINOv2, Ray Data).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags, no boxes in job logs
)


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


app.command("build-bank")(bank.build_bank_command)
app.command("bank-info")(bank.bank_info_command)
app.command("run")(run.run_command)
app.command("rescore")(run.rescore_command)
app.command("eval")(results.eval_command)
app.command("visualize")(results.visualize_command)
app.command("export")(results.export_command)
app.command("estimate")(run.estimate_command)
app.add_typer(review.review_app, name="review",
              help="Choose the labels a person should check and hand them to Label Studio or CVAT; "
                   "`review merge` takes the corrections back.")
app.command("bench")(tools.bench_command)
app.command("demo")(tools.demo_command)


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
