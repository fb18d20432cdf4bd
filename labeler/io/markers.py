"""What labeler's own output files carry near their start, so that a command can tell a file it may
replace (one it wrote) from a user's file that happens to have the same name
(:func:`labeler.io.storage.check_output_file`). Folders carry theirs in
:mod:`labeler.io.published_folder`, run folders in :mod:`labeler.outdir.layout`."""

#: The safetensors metadata ``format`` of a prototype bank.
BANK = "labeler-prototype-bank"
#: The first key (``format``) of a saved ``labeler eval`` report.
EVAL_REPORT = "labeler-eval/1"
#: The first key (``format``) of a saved ``labeler bench`` report.
BENCH_REPORT = "labeler-bench/1"
#: The PNG ``Software`` text of ``labeler bank-info --plot``.
PLOT_SOFTWARE = "labeler bank-info"


def png_text(key: str, value: str) -> bytes:
    """How a PNG text chunk holds ``key: value`` (``tEXt``: the key, a NUL byte, the value)."""
    return key.encode("latin-1") + b"\x00" + value.encode("latin-1")
