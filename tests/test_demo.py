"""The demo runs the whole flow offline and says where everything is."""

import json

from labeler.demo import DEMO_PICTURES, DEMO_TARGETS


def test_demo_end_to_end(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "demo" / "labels" / "run.json").read_text())
    assert manifest["counts"]["images_ok"] == DEMO_TARGETS and manifest["counts"]["images_error"] == 1
    assert (tmp_path / "demo" / "bank.safetensors").exists() and (tmp_path / "demo" / "labels" / "coco.json").exists()
    assert "random weights" in result.stdout and "labeler run --bank" in result.stdout
    evaluation = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert evaluation["images"]["evaluated"] == DEMO_TARGETS and evaluation["images"]["gt_without_prediction"] == 1
    assert (tmp_path / "demo" / "pictures" / "index.html").exists()
    assert len(list((tmp_path / "demo" / "pictures").glob("*.png"))) == DEMO_PICTURES + 1  # and summary.png
    page = (tmp_path / "demo" / "pictures" / "index.html").read_text()
    assert "<h2>1 error image</h2>" in page and "broken.jpg</code>: decode failed: not an image file" in page
    assert "1 error image (listed in index.html)" in result.stdout
    suggested = [line.split()[1:] for line in result.stdout.splitlines()
                 if line.startswith(("  labeler visualize", "  labeler export"))]
    assert [args[0] for args in suggested] == ["visualize", "export", "export"]
    for args in suggested:  # the next steps the demo names work as printed
        follow = run_cli(*args)
        assert follow.exit_code == 0, follow.stderr[-2000:]
