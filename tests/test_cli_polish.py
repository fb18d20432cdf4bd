"""The command line tells the truth quickly: --version, flags shown as flags, paths checked before
torch or Ray load, hub ids that cannot be fetched fail in seconds with the way out."""

import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from labeler import __version__

FIRST_LINES = textwrap.dedent("""
    import sys
    from labeler.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exit_:
        print("exit", exit_.code, "torch" in sys.modules, "ray" in sys.modules)
""")


def cli_in_fresh_process(*args, env=None):
    return subprocess.run([sys.executable, "-c", FIRST_LINES, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"labeler {__version__}"


@pytest.mark.parametrize("command, flags", [
    ("run", ["--overwrite", "--compile", "--relist"]),
    ("export", ["--keep-empty"]),
    ("bench", ["--no-ray", "--check"]),
])
def test_flags_are_shown_as_flags(run_cli, command, flags):
    text = run_cli(command, "--help").stdout
    assert "<bool>" not in text and "BOOLEAN" not in text
    for flag in flags:
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        assert line.split()[0] == flag and not re.fullmatch(r"[A-Z_]+|<\w+>", line.split()[1])  # no value


@pytest.mark.parametrize("args", [
    ["run", "--bank", "{missing}", "--images", "{here}", "--out", "{here}/out"],
    ["run", "--bank", "{here}/bank.safetensors", "--images", "{missing}", "--out", "{here}/out"],
    ["build-bank", "--refs", "{missing}", "--images", "{here}", "--out", "{here}/b.safetensors"],
    ["export", "--pred", "{missing}", "--format", "yolo", "--out", "{here}/y"],
    ["visualize", "--pred", "{here}", "--out", "{here}/v"],
    ["eval", "--pred", "{missing}", "--gt", "{here}/gt.json"],
    ["estimate", "--refs", "{missing}", "--images", "{here}", "--out", "{here}/e"],
    ["review", "--pred", "{missing}", "--out", "{here}/r"],
    ["rescore", "--pred", "{missing}", "--bank", "{here}/bank.safetensors", "--out", "{here}/o"],
])
def test_a_wrong_path_is_reported_before_torch_or_ray_load(tmp_path, args):
    (tmp_path / "bank.safetensors").write_bytes(b"x")
    (tmp_path / "gt.json").write_text("{}")
    args = [a.format(missing=tmp_path / "nope", here=tmp_path) for a in args]
    result = cli_in_fresh_process(*args)
    assert result.stdout.strip().endswith("exit 2 False False"), result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and ("nope: no such file or folder" in line or "no run.json" in line)


@pytest.fixture
def closed_hub(tmp_path):
    """Environment of a machine whose hub does not answer (a port nothing listens on) and whose cache is empty."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}


LOAD = "from labeler.models import load_dinov2, load_sam2\nimport sys\n{call}"


@pytest.mark.parametrize("call", ['load_dinov2("facebook/dinov2-small")', 'load_sam2("facebook/sam2.1-hiera-tiny")'])
def test_a_hub_id_that_cannot_be_fetched_fails_at_once_with_the_way_out(closed_hub, call):
    for offline, reason in (("0", "cannot be reached"), ("1", "HF_HUB_OFFLINE is set")):
        result = subprocess.run([sys.executable, "-c", LOAD.format(call=call)], capture_output=True, text=True,
                                timeout=60, env={**os.environ, **closed_hub, "HF_HUB_OFFLINE": offline})
        assert result.returncode != 0
        message = result.stderr.strip().splitlines()[-1]
        assert "ModelLoadError" in message and "not in the local Hugging Face cache" in message and reason in message
        assert "pass a local path instead" in message and "HF_HUB_OFFLINE=1" in message


def test_a_cached_hub_id_loads_without_the_hub(closed_hub, tmp_path):
    """A model in the local cache is used as it is: no request to the hub, which here would never answer."""
    snapshot = tmp_path / "hf" / "hub" / "models--someone--tiny-dinov2" / "snapshots" / "0123abcd"
    build = textwrap.dedent(f"""
        from labeler.models.dinov2_builder import build_random_dinov2
        build_random_dinov2("tiny").save_pretrained({str(snapshot)!r})
    """)
    subprocess.run([sys.executable, "-c", build], check=True, timeout=120)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    result = subprocess.run(
        [sys.executable, "-c", LOAD.format(call='print(load_dinov2("someone/tiny-dinov2").feature_dim)')],
        capture_output=True, text=True, timeout=120, env={**os.environ, **closed_hub})
    assert result.returncode == 0 and result.stdout.strip() == "32", result.stderr[-2000:]


def test_a_cached_sam2_hub_checkpoint_loads_without_the_hub(closed_hub, tmp_path):
    """The hub's SAM2 checkpoint, found in the cache, loads through labeler's own safe checkpoint path."""
    snapshot = tmp_path / "hf" / "hub" / "models--facebook--sam2.1-hiera-tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    check = textwrap.dedent(f"""
        import torch
        from labeler.models import load_sam2
        from labeler.models.sam2_builder import build_random_sam2
        reference = build_random_sam2("t")
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.add_(1.0)  # weights no fresh model has: equal only if the checkpoint was loaded
        torch.save({{"model": reference.state_dict()}}, {str(snapshot / "sam2.1_hiera_tiny.pt")!r})
        loaded = load_sam2("facebook/sam2.1-hiera-tiny")
        same = all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))
        print("same" if same else "different")
    """)
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **closed_hub})
    assert result.returncode == 0 and result.stdout.strip() == "same", result.stderr[-2000:]


def _options(*path):
    from typer.main import get_command

    from labeler.cli import app

    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return {param.name: param for param in command.params}


@pytest.mark.parametrize("command, config, set_by_cli", [
    ("run", "labeler.run.config:RunConfig", {"ray_logs", "replan_after"}),
    ("bench", "labeler.bench.config:BenchConfig", {"image_size"}),  # WxH text, checked below
    ("estimate", "labeler.quality.estimate_config:EstimateConfig", {"run"}),
    ("rescore", "labeler.rescore.config:RescoreConfig", {"ray_logs", "replan_after"}),
])
def test_every_config_field_is_an_option_with_the_fields_default(command, config, set_by_cli):
    """A new config field without an option, or a CLI default that differs from the API's, fails here."""
    import dataclasses
    import importlib

    module, name = config.split(":")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    options = _options(command)
    assert set(fields) - set_by_cli <= set(options)
    for field_name in set(fields) - set_by_cli:
        field, option = fields[field_name], options[field_name]
        assert option.required == (field.default is dataclasses.MISSING), field_name
        if not option.required:
            assert option.default == field.default, field_name
    if command == "bench":
        from labeler.bench.config import parse_image_size

        assert parse_image_size(options["image_size"].default) == fields["image_size"].default


def test_estimate_fold_run_options_have_the_run_defaults():
    import dataclasses

    from labeler.cli.run import FOLD_RUN_OPTIONS
    from labeler.run.config import RunConfig

    fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    options = _options("estimate")
    assert {name: options[name].default for name in FOLD_RUN_OPTIONS} == {name: fields[name] for name in FOLD_RUN_OPTIONS}
