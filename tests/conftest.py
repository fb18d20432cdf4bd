"""Shared fixtures: generated datasets and a way to run the CLI in-process."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from labeler.synthetic import generate_dataset


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``labeler ARGS...`` through the real entry point, in this process."""
    from labeler.cli import main

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["labeler", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def refs_mixed(tmp_path_factory) -> Path:
    """Eight reference images whose annotations cycle through every segmentation kind."""
    folder = tmp_path_factory.mktemp("refs-mixed")
    return generate_dataset(folder, 8, seed=1, segmentation="mixed")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, document: dict) -> Path:
    Path(path).write_text(json.dumps(document))
    return Path(path)
