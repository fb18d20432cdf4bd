"""labeler rescore: a run's kept proposals labelled with another bank give, bit for bit, the labels of a fresh
run with that bank; sharded, resumable, exactly once; refused where it cannot be right."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labeler.bank.build import build_bank
from labeler.bench.equivalence import compare_labels
from labeler.io.kept_proposals import KEPT_SCHEMA, footer
from labeler.outdir.shards import kept_twin, list_shards
from labeler.synthetic import generate_dataset

from .conftest import assert_coco_shards_match_parquet, load_json

RUN = ["--sam2", "random:tiny", "--points-per-side", "4", "--batch-size", "3", "--rows-per-shard", "3",
       "--max-error-rate", "0.5"]
RESCORE = ["--rows-per-shard", "3", "--max-error-rate", "0.5"]
LABEL_FIELDS = ("image_id", "uri", "file_name", "width", "height", "status", "error", "proposals", "detections")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two banks of the same encoder (other reference images; B also has a negative reference), and eight
    target images plus a broken one."""
    root = tmp_path_factory.mktemp("rescore")
    banks = []
    for name, seed in (("a", 3), ("b", 4)):
        refs = generate_dataset(root / f"refs-{name}", 4, seed=seed)
        if name == "b":
            document = load_json(refs)
            first, second = sorted(c["id"] for c in document["categories"])[:2]
            donor = next(a for a in document["annotations"] if a["category_id"] == second)
            document["annotations"].append(dict(donor, id=99_999, category_id=first, negative=True))
            refs.write_text(json.dumps(document))
        bank = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:tiny", sam2="random:tiny",
                          device="cpu")
        banks.append(root / f"bank-{name}.safetensors")
        bank.save(str(banks[-1]))
    images = generate_dataset(root / "targets", 8, seed=5, image_format="jpg").parent / "images"
    (images / "broken.jpg").write_text("not a jpeg")
    return root, banks[0], banks[1], images


def rows_by_id(out: Path) -> dict[int, dict]:
    rows = [row for shard in list_shards(str(out)) for row in pq.read_table(shard).to_pylist()]
    by_id = {row["image_id"]: {k: row[k] for k in LABEL_FIELDS} for row in rows}
    assert len(by_id) == len(rows)  # each image once
    return by_id


@pytest.fixture(scope="module")
def runs(setup, ray_session):
    """A run with bank A keeping float32 and float16 proposals, and a fresh run with bank B."""
    from typer.testing import CliRunner

    from labeler.cli import app

    root, bank_a, bank_b, images = setup
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output[-3000:]
        return result

    cli("run", "--bank", bank_a, "--images", images, "--out", root / "a32", "--keep-proposals", "float32", *RUN)
    cli("run", "--bank", bank_a, "--images", images, "--out", root / "a16", "--keep-proposals", "float16", *RUN)
    cli("run", "--bank", bank_b, "--images", images, "--out", root / "fresh-b", *RUN)
    return cli


def test_rescoring_with_another_bank_equals_a_fresh_run_bit_for_bit(setup, runs):
    root, bank_a, bank_b, images = setup
    result = runs("rescore", "--pred", root / "a32", "--bank", bank_b, "--out", root / "b32", *RESCORE)
    assert "9 images listed: 9 labelled now, 0 already done" in result.output
    fresh, rescored, original = rows_by_id(root / "fresh-b"), rows_by_id(root / "b32"), rows_by_id(root / "a32")
    assert rescored == fresh
    assert sum(len(row["detections"]) for row in fresh.values()) > 0
    assert rescored != original  # bank B's labels, not bank A's
    assert sum(row["status"] == "error" for row in rescored.values()) == 1
    assert_coco_shards_match_parquet(root / "b32")
    manifest = load_json(root / "b32" / "run.json")
    run_a = load_json(root / "a32" / "run.json")
    assert manifest["bank"]["content_hash"] == load_json(root / "fresh-b" / "run.json")["bank"]["content_hash"]
    assert manifest["rescored_from"]["bank"]["content_hash"] == run_a["bank"]["content_hash"]
    assert manifest["rescored_from"]["out_id"] == run_a["out_id"]
    assert manifest["source_root"] == run_a["source_root"]
    coco, fresh_coco = load_json(root / "b32" / "coco.json"), load_json(root / "fresh-b" / "coco.json")

    def annotations(document):  # ids follow the shards' order, which differs between two OUTs
        return sorted((a["image_id"], a["score"], a["category_id"], a["bbox"], a["segmentation"]["counts"])
                      for a in document["annotations"])

    assert annotations(coco) == annotations(fresh_coco) and len(coco["images"]) == 8


def test_graph_diffusion_rescoring_equals_a_fresh_graph_diffusion_run(setup, runs):
    root, bank_a, bank_b, images = setup
    runs("run", "--bank", bank_b, "--images", images, "--out", root / "fresh-b-graph", "--merge", "graph-diffusion",
         *RUN)
    runs("rescore", "--pred", root / "a32", "--bank", bank_b, "--out", root / "b32-graph", "--merge",
         "graph-diffusion", *RESCORE)
    graph = rows_by_id(root / "fresh-b-graph")
    assert rows_by_id(root / "b32-graph") == graph
    assert sum(len(row["detections"]) for row in graph.values()) > 0
    assert load_json(root / "b32-graph" / "run.json")["settings"]["merge"] == "graph-diffusion"


def test_kept_proposals_are_one_row_per_label_row_with_their_footer(setup, runs):
    root, *_ = setup
    for shard in list_shards(str(root / "a32")):
        labels = pq.read_table(shard)
        kept = pq.read_table(kept_twin(str(root / "a32"), shard))
        assert kept.schema.remove_metadata() == KEPT_SCHEMA
        assert kept.column("image_id").equals(labels.column("image_id"))
        info = footer(kept)
        assert info["embedding_dtype"] == "float32" and info["encoder"] == "random:tiny" and info["sam2"] == "random:tiny"
        for row, kept_row in zip(labels.to_pylist(), kept.to_pylist()):
            if row["status"] == "ok":
                count = len(kept_row["rle_lengths"]) // 4
                assert count == row["proposals"]
                assert len(kept_row["embeddings"]) == count * info["embedding_dim"] * 4
            else:
                assert kept_row["rle_blob"] is None
    assert not (root / "fresh-b" / "proposals").exists()


def test_float16_embeddings_stay_within_the_documented_tolerance(setup, runs):
    """Half the embedding bytes; the labels measured against the float32 rescoring with labeler.bench.equivalence."""
    root, bank_a, bank_b, images = setup
    runs("rescore", "--pred", root / "a16", "--bank", bank_b, "--out", root / "b16", *RESCORE)
    exact, half = rows_by_id(root / "fresh-b"), rows_by_id(root / "b16")
    agreement = compare_labels([exact[k] for k in sorted(exact)], [half[k] for k in sorted(half)])
    assert agreement.same_labels, agreement
    assert agreement.min_mask_iou == 1.0 and agreement.max_score_diff <= 2e-3, agreement


def test_a_rescore_resumes_and_labels_each_image_once(setup, runs):
    root, bank_a, bank_b, images = setup
    out = root / "resumed"
    runs("rescore", "--pred", root / "a32", "--bank", bank_b, "--out", out, *RESCORE)
    shards = list_shards(str(out))
    Path(shards[0]).unlink()  # as if the run had been killed before this shard was published
    again = runs("rescore", "--pred", root / "a32", "--bank", bank_b, "--out", out, *RESCORE)
    assert "already done" in again.output
    assert rows_by_id(out) == rows_by_id(root / "fresh-b")
    nothing = runs("rescore", "--pred", root / "a32", "--bank", bank_b, "--out", out, *RESCORE)
    assert "0 labelled now, 9 already done" in nothing.output


def test_rescore_is_refused_where_it_cannot_be_right(setup, runs, tmp_path, run_cli):
    root, bank_a, bank_b, images = setup
    no_kept = run_cli("rescore", "--pred", root / "fresh-b", "--bank", bank_a, "--out", tmp_path / "x")
    assert no_kept.exit_code != 0 and "did not keep its proposals" in no_kept.stderr
    refs = generate_dataset(tmp_path / "refs", 4, seed=6)
    other = build_bank(str(refs), str(refs.parent / "images"), dinov2="random:small", device="cpu")
    other.save(str(tmp_path / "other.safetensors"))
    wrong = run_cli("rescore", "--pred", root / "a32", "--bank", tmp_path / "other.safetensors", "--out", tmp_path / "y")
    assert wrong.exit_code != 0 and "rescoring needs a bank of the same encoder" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    matched = run_cli("run", "--bank", bank_a, "--images", images, "--out", tmp_path / "z", "--prompts", "matched",
                      "--keep-proposals", "float32")
    assert matched.exit_code != 0 and "--keep-proposals needs --prompts grid" in matched.stderr


def test_the_run_manifest_and_settings_record_the_kept_proposals(setup, runs):
    root, *_ = setup
    settings = json.loads((root / "a32" / "_state" / "settings.json").read_text())["settings"]
    assert settings["keep_proposals"] == "float32"
    assert load_json(root / "a16" / "run.json")["settings"]["keep_proposals"] == "float16"


def test_a_tiled_run_rescored_equals_a_fresh_tiled_run(setup, runs):
    """Kept proposals of tiled images carry their tiles: rescoring places and joins them as the run did."""
    root, bank_a, bank_b, images = setup
    tiled = ["--tile", "200", "--tile-overlap", "0.25"]
    runs("run", "--bank", bank_a, "--images", images, "--out", root / "a-tiled", "--keep-proposals", "float32",
         *tiled, *RUN)
    runs("run", "--bank", bank_b, "--images", images, "--out", root / "fresh-b-tiled", *tiled, *RUN)
    runs("rescore", "--pred", root / "a-tiled", "--bank", bank_b, "--out", root / "b-tiled", *RESCORE)
    fresh = rows_by_id(root / "fresh-b-tiled")
    assert rows_by_id(root / "b-tiled") == fresh
    assert all(row["proposals"] > 16 for row in fresh.values() if row["status"] == "ok")  # 4 tiles of 16 prompts
    assert sum(len(row["detections"]) for row in fresh.values()) > 8
    kept = pq.read_table(kept_twin(str(root / "a-tiled"), list_shards(str(root / "a-tiled"))[0])).to_pylist()
    assert all(len(row["tiles"]) == 4 * 6 * 4 for row in kept if row["rle_blob"] is not None)
