"""visualize writes valid pictures, a contact sheet and a summary; bank-info draws its matrix."""

import re

from PIL import Image

from labeler.synthetic import generate_dataset
from labeler.visualize import visualize

from .conftest import fake_run, load_json


def test_pictures_index_and_summary(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 5, seed=3)
    run = fake_run(tmp_path / "run", gt, error_rows=[(999, "/nowhere.png", "read failed")])
    result = visualize(str(run), str(tmp_path / "vis"), n=3, min_score=0.5, seed=1)
    assert len(result.pictures) == 3
    for picture in result.pictures + [result.summary]:
        with Image.open(picture) as image:
            image.verify()
    with Image.open(result.pictures[0]) as image:
        assert image.size == (320, 256 + 16)
    linked = set(re.findall(r'<img src="([^"]+)"', result.index.read_text()))
    assert {p.name for p in result.pictures} | {"summary.png"} == linked
    again = visualize(str(run), str(tmp_path / "vis2"), n=3, min_score=0.5, seed=1)
    assert [p.name for p in again.pictures] == [p.name for p in result.pictures]  # the seed fixes the sample


def test_index_counts_in_words_lists_error_images_and_draws_the_kept_classes(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 3, seed=3, objects_per_image=(1, 1))
    run = fake_run(tmp_path / "run", gt, error_rows=[
        (998, "/data/broken.jpg", "decode failed: not an image file"),
        (999, "/data/gone.jpg", "read failed: no such file"),
    ])
    result = visualize(str(run), str(tmp_path / "vis"), n=3, min_score="0.5", classes="disc,square,triangle,star")
    page = result.index.read_text()
    assert "1 detection<br>" in page and "1 detections" not in page and "3 sampled images" in page
    assert result.errors == 2 and "<h2>2 error images</h2>" in page
    assert "/data/broken.jpg</code>: decode failed: not an image file" in page
    assert "/data/gone.jpg</code>: read failed: no such file" in page
    subset = visualize(str(run), str(tmp_path / "vis-disc"), n=3, min_score=0.0, classes="disc")
    drawn = re.findall(r"&middot; (\d+) detection", subset.index.read_text())
    document = load_json(gt)
    disc = next(c["id"] for c in document["categories"] if c["name"] == "disc")
    assert sorted(map(int, drawn)) == sorted(
        sum(a["category_id"] == disc for a in document["annotations"] if a["image_id"] == i["id"])
        for i in document["images"])


def test_ground_truth_side_by_side(tmp_path):
    gt = generate_dataset(tmp_path / "gt", 2, seed=3)
    run = fake_run(tmp_path / "run", gt)
    result = visualize(str(run), str(tmp_path / "vis"), n=2, gt=str(gt))
    with Image.open(result.pictures[0]) as image:
        assert image.size == (2 * 320 + 4, 256 + 16)


def test_bank_info_plot(tmp_path, run_cli, refs_mixed):
    bank = tmp_path / "bank.safetensors"
    built = run_cli("build-bank", "--refs", refs_mixed, "--images", refs_mixed.parent / "images", "--out", bank,
                    "--dinov2", "random:tiny", "--sam2", "random:tiny", "--device", "cpu")
    assert built.exit_code == 0, built.stderr
    result = run_cli("bank-info", bank, "--plot", tmp_path / "similarity.png")
    assert result.exit_code == 0 and "wrote" in result.stdout
    with Image.open(tmp_path / "similarity.png") as image:
        image.verify()
