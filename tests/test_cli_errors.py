"""Every command's bad arguments and bad input files: one line on stderr, exit status 2, no traceback."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from labeler.bank.file import PrototypeBank
from labeler.io.coco import Category
from labeler.outdir.merged_coco import write_coco
from labeler.run.manifest import run_categories
from labeler.synthetic import generate_dataset

from .conftest import fake_run, write_json

TINY = ["--dinov2", "random:tiny", "--sam2", "random:tiny"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Valid inputs to break one thing at a time: references, a bank, a finished run, ground truth."""
    root = tmp_path_factory.mktemp("cli-errors")
    refs = generate_dataset(root / "refs", 2, seed=3)
    bank = PrototypeBank(
        class_prototypes=F.normalize(torch.eye(3)[:2], dim=1), instance_prototypes=torch.eye(3)[:2],
        instance_class=torch.tensor([0, 1]), categories=[Category(1, "a"), Category(2, "b")],
        encoder="random:tiny", input_size=518, context_ratio=0.2, annotation_ids=[1, 2],
    )
    bank.save(str(root / "bank.safetensors"))
    gt = generate_dataset(root / "gt", 2, seed=4)
    write_coco(str(fake_run(root / "run", gt)), run_categories(str(root / "run")))
    (root / "folder").mkdir()
    (root / "file.txt").write_text("a file")
    gt_document = json.loads(gt.read_text())
    variants = {
        "empty-list.json": [],
        "no-bbox.json": {**gt_document, "annotations": [{k: v for k, v in a.items() if k != "bbox"}
                                                        for a in gt_document["annotations"]]},
        "no-categories.json": {k: v for k, v in gt_document.items() if k != "categories"},
        "huge-image-id.json": {**gt_document, "images": [dict(gt_document["images"][0], id=2**63)]},
        "no-image-id.json": {**gt_document, "annotations": [{k: v for k, v in a.items() if k != "image_id"}
                                                            for a in gt_document["annotations"]]},
    }
    for name, document in variants.items():
        write_json(root / name, document)
    return root, refs, gt


def build_bank(refs, out, *extra):
    return ["build-bank", "--refs", refs, "--images", refs.parent / "images", "--out", out, *TINY, *extra]


def run(root, *extra, out="out", bank="bank.safetensors"):
    return ["run", "--bank", root / bank, "--images", root / "gt" / "images", "--out", root / out,
            "--sam2", "random:tiny", *extra]


CASES = {
    "build-bank --context-ratio nan": (lambda r, refs, gt: build_bank(refs, r / "b.st", "--context-ratio", "nan"),
                                       r"--context-ratio must be in \[0, 10\], got nan"),
    "build-bank --batch-size 0": (lambda r, refs, gt: build_bank(refs, r / "b.st", "--batch-size", "0"),
                                  "--batch-size must be at least 1"),
    "build-bank --out a folder": (lambda r, refs, gt: build_bank(refs, r / "folder"), "is a folder; pass a file name"),
    "build-bank --refs []": (lambda r, refs, gt: ["build-bank", "--refs", r / "empty-list.json", "--images", r,
                                                  "--out", r / "b.st", *TINY], "a COCO file must hold a JSON object"),
    "build-bank image id 2^63": (lambda r, refs, gt: ["build-bank", "--refs", r / "huge-image-id.json", "--images", r,
                                                      "--out", r / "b.st", *TINY],
                                 r"field 'id' 9223372036854775808 is not in \[0, 2\^63\)"),
    "bank-info missing": (lambda r, refs, gt: ["bank-info", r / "nope.safetensors"], "nope.safetensors: no such file"),
    "bank-info not a bank": (lambda r, refs, gt: ["bank-info", r / "file.txt"], "not a readable safetensors file"),
    "bank-info --plot a folder": (lambda r, refs, gt: ["bank-info", r / "bank.safetensors", "--plot", r / "folder"],
                                  "--plot .* is a folder"),
    "run --batch-size 0": (lambda r, refs, gt: run(r, "--batch-size", "0"), "--batch-size must be at least 1"),
    "run --pred-iou-thr nan": (lambda r, refs, gt: run(r, "--pred-iou-thr", "nan"), "--pred-iou-thr must be in"),
    "run --gpus-per-actor nan": (lambda r, refs, gt: run(r, "--gpus-per-actor", "nan"), "--gpus-per-actor must be"),
    "run --max-bytes 0": (lambda r, refs, gt: run(r, "--max-bytes", "0"), "--max-bytes must be at least 1"),
    "run --read-timeout 0": (lambda r, refs, gt: run(r, "--read-timeout", "0"), "--read-timeout must be a positive"),
    "run --out a file": (lambda r, refs, gt: run(r, out="file.txt"), "file.txt is a file; pass a folder"),
    "run --bank missing": (lambda r, refs, gt: run(r, bank="nope.safetensors"), "nope.safetensors: no such file"),
    "run --storage-options [1]": (lambda r, refs, gt: run(r, "--storage-options", "[1]"),
                                  "--storage-options must be a JSON object"),
    "eval --gt []": (lambda r, refs, gt: ["eval", "--pred", r / "run", "--gt", r / "empty-list.json"],
                     "a COCO file must hold a JSON object"),
    "eval --gt without bbox": (lambda r, refs, gt: ["eval", "--pred", r / "run", "--gt", r / "no-bbox.json"],
                               "missing field 'bbox'"),
    "eval --gt without categories": (lambda r, refs, gt: ["eval", "--pred", r / "run", "--gt",
                                                          r / "no-categories.json"], "missing or non-list 'categories'"),
    "eval --out a folder": (lambda r, refs, gt: ["eval", "--pred", r / "run", "--gt", gt, "--out", r / "folder"],
                            "is a folder; pass a file name"),
    "visualize --out a file": (lambda r, refs, gt: ["visualize", "--pred", r / "run", "--out", r / "file.txt"],
                               "is a file; pass a folder"),
    "visualize --min-score nan": (lambda r, refs, gt: ["visualize", "--pred", r / "run", "--out", r / "v",
                                                       "--min-score", "nan"], r"--min-score: nan is not in \[0, 1\]"),
    "export --out a file": (lambda r, refs, gt: ["export", "--pred", r / "run", "--format", "coco", "--out",
                                                 r / "file.txt"], "is a file; pass a folder"),
    "export --format bogus": (lambda r, refs, gt: ["export", "--pred", r / "run", "--format", "bogus", "--out",
                                                   r / "e"], "--format must be one of"),
    "export not a run": (lambda r, refs, gt: ["export", "--pred", r / "folder", "--format", "coco", "--out", r / "e"],
                         "no run.json"),
    # Issue 26, item 9: tracebacks before.
    "visualize --seed -1": (lambda r, refs, gt: ["visualize", "--pred", r / "run", "--out", r / "v", "--seed", "-1"],
                            "--seed must be non-negative"),
    "visualize --gt []": (lambda r, refs, gt: ["visualize", "--pred", r / "run", "--out", r / "v", "--gt",
                                               r / "empty-list.json"], "a COCO file must hold a JSON object"),
    "visualize --gt without image_id": (lambda r, refs, gt: ["visualize", "--pred", r / "run", "--out", r / "v",
                                                             "--gt", r / "no-image-id.json"],
                                        "missing field 'image_id'"),
    "estimate --seed -1": (lambda r, refs, gt: ["estimate", "--refs", refs, "--images", refs.parent / "images",
                                                "--out", r / "est", "--seed", "-1", *TINY],
                           "--seed must be non-negative"),
    "export --simplify 1e300": (lambda r, refs, gt: ["export", "--pred", r / "run", "--format", "yolo", "--out",
                                                     r / "y", "--simplify", "1e300"], "--simplify must be"),
    "review merge --val-fraction nan": (lambda r, refs, gt: ["review", "merge", "--pred", r / "run", "--review", r,
                                                             "--labels", r / "file.txt", "--out", r / "m",
                                                             "--val-fraction", "nan"], "--val-fraction must be"),
    "bench --json a folder": (lambda r, refs, gt: ["bench", "--json", r / "folder", "--no-ray"], "--json .* is a folder"),
    "bench --image-size 10": (lambda r, refs, gt: ["bench", "--image-size", "10", "--no-ray"], "--image-size: expected"),
    "demo --out a file": (lambda r, refs, gt: ["demo", "--out", r / "file.txt"], "is a file; pass a folder"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_status_2(run_cli, inputs, case):
    make, message = CASES[case]
    result = run_cli(*make(*inputs))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]


def test_an_unreachable_object_store_is_one_line(run_cli, inputs, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    result = run_cli("bank-info", "s3://nowhere/bank.safetensors",
                     "--storage-options", '{"endpoint_url": "http://127.0.0.1:9"}')
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        'error: storage: Could not connect to the endpoint URL: "http://127.0.0.1:9/nowhere/bank.safetensors"'
    ]


def test_ground_truth_without_area_is_evaluated_with_the_mask_area(run_cli, inputs, tmp_path):
    root, _, gt = inputs
    document = json.loads(gt.read_text())
    for annotation in document["annotations"]:
        del annotation["area"]
    result = run_cli("eval", "--pred", root / "run", "--gt", write_json(tmp_path / "no-area.json", document))
    assert result.exit_code == 0, result.stderr
    assert "had no 'area'; their mask (or box) area was used" in result.stdout


@pytest.mark.parametrize("command", ["build-bank", "eval", "bank-info --plot", "bench --json"])
def test_a_file_of_the_users_at_an_output_path_is_never_replaced(run_cli, inputs, refs_mixed, tmp_path, command):
    """Only folders had the ownership rule: build-bank, eval --out, bank-info --plot and bench --json
    replaced whatever file stood at their path."""
    root, refs, gt = inputs
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"a user's file")
    make = {
        "build-bank": lambda out: build_bank(refs_mixed, out),
        "eval": lambda out: ["eval", "--pred", root / "run", "--gt", gt, "--out", out],
        "bank-info --plot": lambda out: ["bank-info", root / "bank.safetensors", "--plot", out],
        "bench --json": lambda out: ["bench", "--no-ray", "--images", "1", "--json", out],
    }[command]
    refused = run_cli(*make(mine))
    assert refused.exit_code == 2 and "exists and this command did not write it" in refused.stderr
    assert mine.read_bytes() == b"a user's file"
    if command != "bench --json":  # its own earlier output is replaced (bench itself is too slow to run twice here)
        own = tmp_path / {"build-bank": "own.safetensors", "eval": "own.json", "bank-info --plot": "own.png"}[command]
        assert run_cli(*make(own)).exit_code == 0 and run_cli(*make(own)).exit_code == 0
