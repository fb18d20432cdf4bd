"""Tiled labelling (``labeler run --tile``): where tiles go, masks placed in the image, objects cut by a tile border
joined, the sparse image-level merge against the dense one, and the run end to end on a 4096x3072 image."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError
from labeler.io.coco import coco_rle
from labeler.io.proposal_payload import encode_proposals, join_payloads, split_payload
from labeler.io.rle import pack_counts, placed_run_lengths
from labeler.method.detections import merge_and_select
from labeler.method.graph_diffusion import Diffusion, diffused_ios, diffused_scores
from labeler.method.scoring import RankedProposals, rank_embedded, soft_merge
from labeler.method.tiled_merge import merge_tiles, place_ranked
from labeler.method.tiles import Tiling, tile_grid, tile_starts, tiled_max_dets
from labeler.outdir.shards import list_shards
from labeler.run.config import RunConfig
from labeler.run.driver import run_labeling
from labeler.synthetic import generate_dataset

from .conftest import assert_coco_shards_match_parquet, overlap_fractions


def test_tiles_cover_the_image_with_one_size_and_the_last_ending_on_the_border():
    assert tile_starts(4096, 1024, 0.2) == [0, 819, 1638, 2457, 3072]
    assert tile_starts(1000, 1024, 0.2) == [0] and tile_starts(1024, 1024, 0.2) == [0]
    tiles = tile_grid((3072, 4096), 1024, 0.25)
    covered = np.zeros((3072, 4096), dtype=bool)
    for x0, y0, x1, y1 in tiles:
        assert (x1 - x0, y1 - y0) == (1024, 1024)
        covered[y0:y1, x0:x1] = True
    assert covered.all() and len(tiles) == 5 * 4
    assert all(b - a <= 768 for a, b in zip(tile_starts(4096, 1024, 0.25), tile_starts(4096, 1024, 0.25)[1:]))
    assert tile_grid((300, 5000), 1024, 0.2)[0] == (0, 0, 1024, 300)  # a side under a tile: the tile is that side


def test_which_images_are_tiled():
    assert Tiling.from_option("off", 1024) is None
    auto = Tiling.from_option("auto", 1024)
    assert auto.size == 1024 and auto.tiles((2048, 1500)) == [] and len(auto.tiles((2049, 1500))) == 6
    explicit = Tiling.from_option("512", 1024, overlap=0.5)
    assert explicit.tiles((512, 512)) == [] and len(explicit.tiles((513, 512))) == 2
    assert tiled_max_dets(100, (3072, 4096), (1024, 1024)) == 1200
    assert tiled_max_dets(100, (1000, 1000), (1000, 1000)) == 100


@pytest.mark.parametrize("seed", range(4))
def test_placed_runs_are_pycocotools_strings_of_the_image(seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(60):
        height, width = (int(v) for v in torch.randint(1, 14, (2,), generator=generator))
        tile_h, tile_w = int(torch.randint(1, height + 1, (1,), generator=generator)), int(
            torch.randint(1, width + 1, (1,), generator=generator))
        if seed == 0:  # tiles as tall as the image: runs go on from one column into the next
            tile_h = height
        top = int(torch.randint(0, height - tile_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - tile_w + 1, (1,), generator=generator))
        masks = torch.rand(4, tile_h, tile_w, generator=generator) < torch.rand(1, generator=generator)
        masks[0], masks[1] = False, True
        strings = pack_counts(*placed_run_lengths(masks, top, left, (height, width)), height, width).strings()
        canvas = np.zeros((height, width, 4), dtype=np.uint8, order="F")
        canvas[top : top + tile_h, left : left + tile_w] = masks.permute(1, 2, 0).numpy()
        expected = [rle["counts"].decode() for rle in mask_utils.encode(np.asfortranarray(canvas))]
        assert strings.to_pylist() == expected


def test_payloads_of_tiles_join_and_split_back():
    generator = torch.Generator().manual_seed(3)
    payloads = [encode_proposals(torch.randn(count, 16, 16, generator=generator), torch.rand(count), (40, 40))
                for count in (3, 0, 5)]
    joined, proposals, bands = join_payloads(payloads)
    assert proposals.tolist() == [3, 0, 5] and joined.count == 8
    for original, back in zip(payloads, split_payload(joined, proposals, bands)):
        assert back.rle_blob == original.rle_blob and np.array_equal(back.band_logits, original.band_logits)
        assert np.array_equal(back.rle_lengths, original.rle_lengths) and np.array_equal(back.iou, original.iou)


def blob_logits(count, size, generator):
    """``[count, size, size]`` smooth random logits: blobs, as SAM2's low-res masks are."""
    coarse = torch.randn(count, 1, 6, 6, generator=generator) * 4
    return F.interpolate(coarse, size=(size, size), mode="bilinear")[:, 0] - 1


def ranked_tile(generator, count=50, classes=3, max_dets=10, size=32, nms_thr=0.5):
    logits = blob_logits(count, size, generator)
    iou = torch.rand(count, generator=generator)
    embeddings = F.normalize(torch.randn(count, 8, generator=generator) + 2, dim=1)
    prototypes = F.normalize(torch.randn(classes, 8, generator=generator) + 2, dim=1)
    return logits, iou, rank_embedded(logits > 0, iou, embeddings, prototypes, max_dets=max_dets, nms_thr=nms_thr)


@pytest.mark.parametrize("diffusion", [None, Diffusion()], ids=["soft", "graph-diffusion"])
def test_one_tile_gives_the_untiled_labels_bit_for_bit(diffusion):
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        image_hw = tuple(int(v) for v in torch.randint(20, 90, (2,), generator=generator))
        logits, iou, ranked = ranked_tile(generator)
        whole = merge_and_select(ranked, logits, image_hw, 10, 0.0, overlaps="rle", diffusion=diffusion)
        window = (0, 0, image_hw[1], image_hw[0])
        tiled = merge_tiles([place_ranked(ranked, logits, iou, 0, window, image_hw)], [window], image_hw, 10,
                            diffusion=diffusion)
        assert len(whole.rle) > 0
        assert torch.equal(whole.index, tiled.index) and torch.equal(whole.labels, tiled.labels)
        assert torch.equal(whole.scores, tiled.scores) and torch.equal(whole.boxes, tiled.boxes)
        assert torch.equal(whole.areas, tiled.areas) and whole.rle.to_pylist() == tiled.rle.to_pylist()


def box_logits(hw, boxes):
    """Logits at a tile's own size (so upsampling keeps them): +10 inside each ``(x0, y0, x1, y1)``, -10 out."""
    logits = torch.full((len(boxes), *hw), -10.0)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        logits[k, y0:y1, x0:x1] = 10.0
    return logits


def hand_ranked(labels, scores, embeddings):
    count = len(labels)
    return RankedProposals(torch.arange(count), torch.tensor(labels), torch.tensor(scores),
                           F.normalize(torch.tensor(embeddings, dtype=torch.float32), dim=1))


def test_an_object_cut_by_a_tile_border_comes_out_once_with_its_whole_mask():
    image_hw = (100, 160)
    left, right = (0, 0, 96, 100), (64, 0, 160, 100)  # they share x in [64, 96)
    # Left tile: the cut object (x 40..96 of 40..120), an object seen whole by both tiles (x 70..90), one of
    # another class meeting the cut one in the band, and one only it sees.
    left_boxes = [(40, 30, 96, 70), (70, 75, 90, 95), (60, 10, 80, 30), (5, 5, 20, 20)]
    right_boxes = [(0, 30, 56, 70), (6, 75, 26, 95), (60, 60, 90, 90)]  # in the right tile's frame
    left_ranked = hand_ranked([0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], [[1, 0], [1, 0.1], [0, 1], [1, 0.3]])
    right_ranked = hand_ranked([0, 0, 0], [0.85, 0.75, 0.5], [[1, 0.05], [1, 0.2], [1, 0.4]])
    iou_left, iou_right = torch.tensor([0.95, 0.9, 0.85, 0.8]), torch.tensor([0.93, 0.88, 0.7])
    placed = [
        place_ranked(left_ranked, box_logits((100, 96), left_boxes), iou_left, 0, left, image_hw),
        place_ranked(right_ranked, box_logits((100, 96), right_boxes), iou_right, 1, right, image_hw, first_proposal=4),
    ]
    chosen = merge_tiles(placed, [left, right], image_hw, max_dets=100)

    masks = mask_utils.decode([coco_rle(text, *image_hw) for text in chosen.rle.to_pylist()])
    assert masks.shape[:2] == image_hw
    found = sorted(tuple(int(v) for v in box) for box in chosen.boxes.tolist())
    assert found == [(5, 5, 20, 20), (40, 30, 120, 70), (60, 10, 80, 30), (70, 75, 90, 95), (124, 60, 154, 90)]
    cut = chosen.boxes[:, 0].eq(40).nonzero()[0, 0]
    expected = np.zeros(image_hw, dtype=np.uint8)
    expected[30:70, 40:120] = 1
    assert np.array_equal(masks[:, :, int(cut)], expected) and int(chosen.areas[cut]) == 80 * 40
    # The joined detection is its largest view's: the left tile's 56 columns against the right's 56 (a tie: the
    # first), with that view's position among the image's proposals.
    assert int(chosen.index[cut]) == 0 and chosen.labels[cut] == 0
    assert sorted(chosen.index.tolist()) == [0, 1, 2, 3, 6]


@pytest.mark.parametrize("diffusion", [None, Diffusion()], ids=["soft", "graph-diffusion"])
def test_tiles_without_proposals_give_no_detection(diffusion):
    ranked = rank_embedded(torch.zeros(0, 16, 16, dtype=torch.bool), torch.zeros(0), torch.zeros(0, 8),
                           F.normalize(torch.ones(2, 8), dim=1))
    tiles = [(0, 0, 40, 40), (30, 0, 70, 40)]
    placed = [place_ranked(ranked, torch.zeros(0, 16, 16), torch.zeros(0), t, tiles[t], (40, 70)) for t in range(2)]
    chosen = merge_tiles(placed, tiles, (40, 70), 100, diffusion=diffusion)
    assert len(chosen.rle) == 0 and chosen.boxes.shape == (0, 4) and chosen.scores.shape == (0,)


def dense_masks(chosen_rles, image_hw):
    return torch.from_numpy(mask_utils.decode([coco_rle(t, *image_hw) for t in chosen_rles])).permute(2, 0, 1).bool()


@pytest.mark.parametrize("diffusion", [None, Diffusion()], ids=["soft", "graph-diffusion"])
def test_the_sparse_merge_over_many_tiles_equals_the_dense_one(diffusion):
    """With joining off, every pair of masks that meet is found across tiles: the merged scores are the dense
    merge's over the image-sized masks, in the same rank order."""
    generator = torch.Generator().manual_seed(7)
    image_hw = (70, 100)
    tiles = tile_grid(image_hw, 40, 0.3)
    placed, first = [], 0
    for number, tile in enumerate(tiles):
        logits, iou, ranked = ranked_tile(generator, count=20, classes=2, size=16, nms_thr=1.0)
        placed.append(place_ranked(ranked, logits, iou, number, tile, image_hw, first))
        first += 20
    everything = merge_tiles(placed, tiles, image_hw, max_dets=10_000, diffusion=diffusion, join_iou=2.0)

    order = torch.argsort(torch.cat([p.iou for p in placed]), descending=True, stable=True)
    strings = [s for p in placed for s in p.strings]
    masks = dense_masks([strings[i] for i in order.tolist()], image_hw)
    labels = torch.cat([p.labels for p in placed])[order]
    scores = torch.cat([p.scores for p in placed])[order]
    embeddings = torch.cat([p.embeddings for p in placed])[order]
    if diffusion is None:
        expected = soft_merge(overlap_fractions(masks, labels), embeddings, labels, scores)
    else:
        flat = masks.flatten(1).double()
        intersections = (flat @ flat.T).long()
        expected = diffused_scores(scores, diffused_ios(intersections, flat.sum(1).long(), labels, diffusion),
                                   diffusion.lamb)
    assert len(everything.rle) == len(strings) > 100
    by_index = dict(zip(everything.index.tolist(), everything.scores.tolist()))
    index = torch.cat([p.index for p in placed])[order]
    torch.testing.assert_close(torch.tensor([by_index[i] for i in index.tolist()]), expected.clamp(0, 1),
                               rtol=0, atol=1e-6)
    assert (expected < scores).sum() > 20  # masks did lower each other's scores


def test_tile_options_are_checked():
    base = dict(bank="b", images="i", out="o")
    for bad, message in [(dict(tile="32"), "--tile must be off, auto or a tile side"),
                         (dict(tile="big"), "--tile must be off, auto"),
                         (dict(tile="auto", tile_overlap=0.0), "--tile-overlap must be in (0, 0.5]"),
                         (dict(tile="auto", tile_max_pixels=0), "--tile-max-pixels must be at least 1")]:
        with pytest.raises(LabelerError, match=message.replace("(", r"\(").replace("]", r"\]")):
            RunConfig(**base, **bad).validate()
    RunConfig(**base, tile="2048", tile_overlap=0.5).validate()


@pytest.fixture(scope="module")
def large_source(tmp_path_factory):
    """A 4096x3072 photo of twelve small shapes and a generated 320x256 image, in one folder."""
    root = tmp_path_factory.mktemp("large")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(21)
    photo = Image.new("RGB", (4096, 3072), (96, 128, 96))
    draw = ImageDraw.Draw(photo)
    for k in range(12):
        x, y = 300 + 300 * k + int(rng.integers(0, 60)), int(rng.integers(200, 2800))
        colour = tuple(int(v) for v in rng.integers(20, 240, 3))
        (draw.ellipse if k % 2 else draw.rectangle)((x, y, x + 90, y + 60), fill=colour)
    photo.save(images / "large.jpg", quality=92)
    generate_dataset(root / "small", 1, seed=22, subfolders=False)
    next((root / "small" / "images").glob("*.png")).rename(images / "small.png")
    return images


def rows_by_name(out):
    rows = [row for shard in list_shards(str(out)) for row in pq.read_table(shard).to_pylist()]
    return {row["file_name"]: row for row in rows}


def test_a_large_image_is_labelled_in_tiles_in_the_image_frame(tmp_path, ray_session, large_source):
    from .test_run import TINY_RUN

    bank = tmp_path / "bank.safetensors"
    _bank_for(bank)
    plain = dict(TINY_RUN, bank=str(bank), images=str(large_source), max_pixels=4_000_000)
    run_labeling(RunConfig(**plain, out=str(tmp_path / "untiled")))
    untiled = rows_by_name(tmp_path / "untiled")
    assert untiled["large.jpg"]["status"] == "error"
    assert untiled["large.jpg"]["error"] == ("decode failed: 4096x3072 (12,582,912 pixels) is over --max-pixels "
                                             "4,000,000: label it in tiles with --tile auto, or raise --max-pixels")

    tiled_out = tmp_path / "tiled"
    summary = run_labeling(RunConfig(**plain, out=str(tiled_out), tile="2048", tile_overlap=0.25))
    rows = rows_by_name(tiled_out)
    large = rows["large.jpg"]
    assert large["status"] == "ok" and (large["width"], large["height"]) == (4096, 3072)
    assert large["proposals"] > untiled["small.png"]["proposals"]  # 3 x 2 tiles' proposals
    assert 0 < len(large["detections"]) <= tiled_max_dets(TINY_RUN.get("max_dets", 100), (3072, 4096), (2048, 2048))
    for detection in large["detections"]:
        rle = coco_rle(detection["rle"], 3072, 4096)
        x, y, w, h = detection["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 4096 and y + h <= 3072
        assert int(mask_utils.area(rle)) == detection["area"] > 0
        assert mask_utils.toBbox(rle).tolist() == detection["bbox"]
    # The small image is not tiled: its labels are those of the untiled run.
    assert rows["small.png"]["detections"] == untiled["small.png"]["detections"]
    assert assert_coco_shards_match_parquet(tiled_out) == summary.counts.detections
    assert summary.counts.images_ok == 2


def _bank_for(path):
    from labeler.bank.build import build_bank

    refs = generate_dataset(path.parent / "refs", 2, seed=1)
    build_bank(str(refs), str(path.parent / "refs" / "images"), dinov2="random:tiny", sam2="random:tiny",
               device="cpu").save(str(path))


def test_tiles_done_inside_a_long_batch_keep_the_watchdog_from_calling_it_a_stall(ray_session):
    """A batch of large images can keep a model stage busy longer than --stall-timeout without finishing a row:
    the tiles it reports count as progress, and silence still stops the run."""
    import time

    from labeler.run.progress import report_work, start_tracker
    from labeler.run.watchdog import PipelineStopped, Watchdog

    tracker = start_tracker()
    watchdog = Watchdog(tracker, actor_classes={}, total=4, rows_per_shard=4, stall_timeout=3.0, poll_seconds=0.25)
    started = time.monotonic()
    with pytest.raises(PipelineStopped), watchdog:
        while time.monotonic() - started < 6.0:  # tiles keep coming: twice the stall timeout, no interruption
            report_work(tracker, 8)
            time.sleep(0.25)
        working_until = time.monotonic()
        while time.monotonic() - working_until < 30:  # then silence
            time.sleep(0.05)
    assert watchdog.reason.startswith("no progress for 3 s: the read + decode stage stalled")
    assert 6.0 <= working_until - started and time.monotonic() - working_until < 10


def test_the_pixel_limits_with_and_without_tiling(tmp_path):
    from labeler.actors.decode import decode_one

    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 2000)).save(path)
    whole = decode_one(str(path), 256, 1_000_000)
    assert whole.error == ("decode failed: 3000x2000 (6,000,000 pixels) is over --max-pixels 1,000,000: label it in "
                           "tiles with --tile auto, or raise --max-pixels")
    refused = decode_one(str(path), 256, 1_000_000, tiling=Tiling.from_option("auto", 256, max_pixels=5_000_000))
    assert refused.error == "decode failed: 3000x2000 (6,000,000 pixels) is over --tile-max-pixels 5,000,000"
    tiled = decode_one(str(path), 256, 1_000_000, tiling=Tiling.from_option("auto", 256))
    assert tiled.status == "ok" and (tiled.width, tiled.height) == (3000, 2000)
    assert tiled.sam2_pixels.shape == (150, 256, 256, 3) and tiled.tiles.shape == (150, 4)  # 15 x 10 tiles of 256
