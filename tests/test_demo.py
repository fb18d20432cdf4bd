"""The demo runs the whole flow offline and says where everything is."""

import json

from labeler.demo import DEMO_TARGETS


def test_demo_end_to_end(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "demo" / "labels" / "run.json").read_text())
    assert manifest["counts"]["images_ok"] == DEMO_TARGETS and manifest["counts"]["images_error"] == 1
    assert (tmp_path / "demo" / "bank.safetensors").exists() and (tmp_path / "demo" / "labels" / "coco.json").exists()
    assert "random weights" in result.stdout and "labeler run --bank" in result.stdout
