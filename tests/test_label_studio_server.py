"""The review loop against a real Label Studio server: review -> Label Studio -> merge -> build-bank -> run.

The server (:mod:`tests.label_studio_server`) runs in an environment of its own on 127.0.0.1,
started in the background when the session begins; this test drives it through its HTTP API.
"""

from __future__ import annotations

import copy
import json
import urllib.request

import pytest

from labeler.review.merge import merge_review
from labeler.review.prepare import prepare_review
from labeler.synthetic import generate_dataset

from .conftest import fake_run, load_json
from .label_studio_server import TOKEN, running_server

pytestmark = pytest.mark.label_studio


@pytest.fixture
def label_studio():
    return running_server()


def _pairs(result: list[dict]) -> list[list[dict]]:
    """A prediction's regions by detection: its brush region and its box (``<id>b``)."""
    by_id = {r["id"]: r for r in result}
    return [[r, by_id[r["id"] + "b"]] for r in result if r["type"] == "brushlabels"]


def _relabelled(pair: list[dict], name: str) -> list[dict]:
    pair = copy.deepcopy(pair)
    for region in pair:
        key = region["type"]
        region["value"][key] = [name]
    return pair


def test_the_review_loop_through_a_real_label_studio_server(label_studio, run_cli):
    tmp_path = label_studio.document_root / "case"  # the images Label Studio serves lie under its document root
    gt = generate_dataset(tmp_path / "gt", 8, seed=8, objects_per_image=(2, 3))
    document = load_json(gt)
    out = fake_run(tmp_path / "run", gt, {a["id"]: 0.9 for a in document["annotations"]})
    review = prepare_review(str(out), str(tmp_path / "review"), n=8, random_fraction=0.5, seed=1,
                            document_root=str(label_studio.document_root))
    tasks = json.loads(review.tasks.read_text())

    project = label_studio.call("POST", "/api/projects", {"title": "labeler review",
                                                          "label_config": review.config.read_text()})
    label_studio.call("POST", "/api/storages/localfiles", {"project": project["id"], "path": str(gt.parent),
                                                           "title": "images", "use_blob_urls": False})
    imported = label_studio.call("POST", f"/api/projects/{project['id']}/import", tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (8, 8)
    listed = label_studio.call("GET", f"/api/tasks?project={project['id']}&fields=all&page_size=100")["tasks"]
    by_image = {t["data"]["labeler_image_id"]: t for t in listed}
    first = listed[0]
    served = urllib.request.urlopen(urllib.request.Request(label_studio.url + first["data"]["image"], headers={
        "Authorization": f"Token {TOKEN}"})).read()  # the task's address works in Label Studio
    assert served == (gt.parent / "images" / first["data"]["file_name"]).read_bytes()

    names = [c["name"] for c in document["categories"]]
    order = [c.image_id for c in review.chosen]
    deleted_in, relabelled_in, added_in, skipped, cancelled = order[:5]
    expected = {"removed": 0, "relabelled": 0, "added": 0}
    for image_id, task in by_image.items():
        if image_id == skipped:
            continue
        pairs = _pairs(task["predictions"][0]["result"])
        if image_id == deleted_in:
            pairs.pop()
            expected["removed"] += 1
        elif image_id == relabelled_in:
            old = pairs[0][0]["value"]["brushlabels"][0]
            pairs[0] = _relabelled(pairs[0], next(n for n in names if n != old))
            expected["removed"] += 1
            expected["relabelled"] += 1
            expected["added"] += 1
        elif image_id == added_in:
            pairs.append([{"id": "drawn", "type": "polygonlabels", "from_name": "polygon", "to_name": "image",
                           "original_width": 320, "original_height": 256, "image_rotation": 0,
                           "value": {"points": [[1, 1], [9, 1], [9, 9], [1, 9]], "polygonlabels": [names[0]]}}])
            expected["added"] += 1
        result = [region for pair in pairs for region in pair]
        label_studio.call("POST", f"/api/tasks/{task['id']}/annotations?project={project['id']}",
                          {"result": result, "was_cancelled": image_id == cancelled, "ground_truth": False})
    exported = label_studio.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
    assert len(exported) == 8
    (tmp_path / "export.json").write_text(json.dumps(exported))

    merged = merge_review(str(out), str(tmp_path / "review"), str(tmp_path / "export.json"), str(tmp_path / "final"))
    assert merged.reviewed_images == 6  # one never annotated, one cancelled
    totals = {key: sum(getattr(f, key) for f in merged.figures_all.values()) for key in expected}
    assert totals == expected
    shown = sum(len(_pairs(t["predictions"][0]["result"])) for i, t in by_image.items() if i not in (skipped, cancelled))
    assert sum(f.auto for f in merged.figures_all.values()) == shown
    assert sum(f.kept for f in merged.figures_all.values()) == shown - 2  # the brush masks came back unchanged

    built = run_cli("build-bank", "--refs", tmp_path / "final" / "annotations" / "reviewed.json", "--images",
                    load_json(tmp_path / "final" / "annotations" / "reviewed.json")["info"]["image_root"],
                    "--out", tmp_path / "bank-v2.safetensors", "--dinov2", "random:tiny", "--sam2", "random:tiny",
                    "--device", "cpu")
    assert built.exit_code == 0, built.stderr[-2000:]
    # The whole set labelled again with the new bank from the first run's kept proposals (docs/review.md); that
    # this equals a fresh run with the new bank is tests/test_rescore.py's.
    run_args = ["--images", gt.parent / "images", "--sam2", "random:tiny", "--points-per-side", "4", "--batch-size", "4"]
    first = run_cli("build-bank", "--refs", gt, "--images", gt.parent / "images", "--out", tmp_path / "bank-v1.safetensors",
                    "--dinov2", "random:tiny", "--sam2", "random:tiny", "--device", "cpu")
    assert first.exit_code == 0, first.stderr[-2000:]
    kept = run_cli("run", "--bank", tmp_path / "bank-v1.safetensors", "--out", tmp_path / "labels-out",
                   "--keep-proposals", "float32", *run_args)
    assert kept.exit_code == 0, kept.stderr[-2000:]
    rescored = run_cli("rescore", "--pred", tmp_path / "labels-out", "--bank", tmp_path / "bank-v2.safetensors",
                       "--out", tmp_path / "labels-v2")
    assert rescored.exit_code == 0, rescored.stderr[-2000:]
    assert "8 images listed: 8 labelled now" in rescored.stdout
    assert load_json(tmp_path / "labels-v2" / "run.json")["bank"]["path"] == str(tmp_path / "bank-v2.safetensors")
