"""The ``labeler`` command line: a thin layer over the Python API, one module per group of commands.

Exit status: 0 done; 1 ``labeler run`` finished but labelled no image, or
more error images than ``--max-error-rate`` allows (its summary says why);
2 a user error (:class:`labeler.errors.LabelerError`: one line, ``--debug``
shows its traceback). Paths and arguments are checked before the heavy
libraries (torch, Ray) load, so a mistyped path is reported at once.
"""

from labeler.cli import bank, estimate, results, review, run, tools
from labeler.cli.app import app, main

app.command("build-bank")(bank.build_bank_command)
app.command("bank-info")(bank.bank_info_command)
app.command("run")(run.run_command)
app.command("eval")(results.eval_command)
app.command("visualize")(results.visualize_command)
app.command("export")(results.export_command)
app.command("estimate")(estimate.estimate_command)
app.add_typer(review.review_app, name="review",
              help="Choose the labels a person should check and hand them to Label Studio or CVAT; "
                   "`review merge` takes the corrections back.")
app.command("bench")(tools.bench_command)
app.command("demo")(tools.demo_command)

__all__ = ["app", "main"]
