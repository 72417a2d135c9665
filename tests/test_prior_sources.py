import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from joindet.priors.bank import PriorBank
from joindet.priors.random_crops import RandomCropSource, image_rng, random_crop_boxes
from joindet.priors.selective_search import SelectiveSearchSource, selective_search_boxes
from joindet.priors.sources import PRIOR_SOURCE_REGISTRY, build_prior_source
from joindet.priors.version0 import load_or_compute_version0, version0_cache_key

RECTS = [(20, 15, 60, 55), (90, 40, 150, 100), (30, 70, 70, 110)]  # XYXY, exclusive ends
COLOURS = [(230, 20, 20), (20, 20, 230), (240, 240, 30)]


def drawn_image(width=160, height=120, shift=0):
    """uint8 (H, W, 3) RGB: a colour gradient with the solid rectangles RECTS (shifted right)."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = xx * 200 // width
    image[..., 1] = yy * 200 // height
    image[..., 2] = 110
    for (x1, y1, x2, y2), colour in zip(RECTS, COLOURS):
        image[y1:y2, x1 + shift:x2 + shift] = colour
    return image


# ------------------------------------------------------------------------------ selective search
def test_selective_search_boxes_on_drawn_image():
    image = drawn_image()
    boxes, scores = selective_search_boxes(image, topk=20)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 1 <= boxes.shape[0] <= 20
    assert scores.shape == (boxes.shape[0],)
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= 160) and np.all(boxes[:, 3] <= 120)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    np.testing.assert_allclose(scores, 1.0 - np.arange(boxes.shape[0]) / 20.0, rtol=0, atol=1e-7)
    # Each drawn rectangle is found (IoU > 0.5) among the 20 boxes.
    iou = box_iou(torch.from_numpy(boxes), torch.tensor(RECTS, dtype=torch.float32))
    assert iou.max(dim=0).values.min().item() > 0.5

    # Deterministic, also after a search on another image (OpenCV's ranking draws from C rand()).
    selective_search_boxes(drawn_image(shift=5), topk=20)
    boxes2, scores2 = selective_search_boxes(image, topk=20, num_threads=2)
    np.testing.assert_array_equal(boxes, boxes2)
    np.testing.assert_array_equal(scores, scores2)


def test_selective_search_scales_boxes_back_to_the_original_image():
    big = cv2.resize(drawn_image(), (320, 240), interpolation=cv2.INTER_NEAREST)
    boxes, scores = selective_search_boxes(big, topk=15, min_side=120)
    # Reference: resize by hand to the size the search runs at, search there, scale by 2.
    small = cv2.resize(big, (160, 120), interpolation=cv2.INTER_AREA)
    ref_boxes, ref_scores = selective_search_boxes(small, topk=15, min_side=None)
    np.testing.assert_array_equal(boxes, ref_boxes * 2)
    np.testing.assert_array_equal(scores, ref_scores)
    assert boxes[:, 2].max() <= 320 and boxes[:, 3].max() <= 240
    # min_side only downscales: a small image is searched as is.
    np.testing.assert_array_equal(
        selective_search_boxes(small, topk=15, min_side=500)[0], ref_boxes
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": np.zeros((20, 20), np.uint8)}, "(H, W, 3)"),
        ({"image": np.zeros((20, 20, 3), np.float32)}, "uint8"),
        ({"topk": 0}, "topk"),
        ({"min_side": 0}, "min_side"),
        ({"mode": "slow"}, "mode"),
        ({"seed": -1}, "seed"),
    ],
)
def test_selective_search_rejects_bad_input(kwargs, message):
    args = {"image": np.zeros((20, 20, 3), np.uint8), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        selective_search_boxes(**args)


def _write_images(folder, images, names):
    dicts = []
    for i, (image, name) in enumerate(zip(images, names)):
        path = folder / name
        Image.fromarray(image).save(path)
        dicts.append({"file_name": str(path), "height": image.shape[0], "width": image.shape[1],
                      "image_id": 10 + i})
    return dicts


def test_selective_search_source_workers_agree_and_match_the_function(tmp_path, joindet_log):
    images = [drawn_image(), drawn_image(shift=7), drawn_image(140, 120, shift=-10)]
    dicts = _write_images(tmp_path, images, ["a.png", "b.png", "c.png"])
    serial = SelectiveSearchSource(topk=12, num_workers=0)(dicts)
    parallel = SelectiveSearchSource(topk=12, num_workers=2)(dicts)
    assert len(serial) == len(parallel) == 3
    for image, (b0, s0), (b2, s2) in zip(images, serial, parallel):
        np.testing.assert_array_equal(b0, b2)
        np.testing.assert_array_equal(s0, s2)
        ref_boxes, ref_scores = selective_search_boxes(image, topk=12)  # PNG is lossless
        np.testing.assert_array_equal(b0, ref_boxes)
        np.testing.assert_array_equal(s0, ref_scores)
    assert any("3/3 images (100%)" in r.getMessage() and "ETA" in r.getMessage()
               for r in joindet_log.records)


def test_selective_search_source_survives_a_corrupt_image(tmp_path, joindet_log):
    dicts = _write_images(tmp_path, [drawn_image(), drawn_image(shift=4)], ["ok.png", "bad.jpg"])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    source = SelectiveSearchSource(topk=10, num_workers=0)
    out = source(dicts)
    assert out[0][0].shape[0] > 0
    assert out[1][0].shape == (0, 4) and out[1][1].shape == (0,)
    assert out[1][0].dtype == np.float32 and out[1][1].dtype == np.float32
    assert [f for f, _ in source.last_failed] == [dicts[1]["file_name"]]
    warnings = [r.getMessage() for r in joindet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bad.jpg" in warnings[0]

    # A recorded size that disagrees with the file is also reported, not fatal.
    dicts[0]["height"] = 99
    out = source(dicts)
    assert out[0][0].shape == (0, 4) and len(source.last_failed) == 2


# ------------------------------------------------------------------------------ random crops
def test_random_crop_boxes_bounds_sizes_and_determinism():
    boxes = random_crop_boxes(100, 200, 500, np.random.default_rng(0), min_frac=0.2, max_frac=0.6)
    assert boxes.shape == (500, 4) and boxes.dtype == np.float32
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 200) and np.all(boxes[:, 3] <= 100)
    assert np.all(w >= 0.2 * 200 - 1e-3) and np.all(w <= 0.6 * 200 + 1e-3)
    assert np.all(h >= 0.2 * 100 - 1e-3) and np.all(h <= 0.6 * 100 + 1e-3)
    # Sizes and positions spread over their ranges (uniform: the mean side fraction is ~0.4).
    assert abs(float(np.mean(w / 200)) - 0.4) < 0.03 and abs(float(np.mean(h / 100)) - 0.4) < 0.03
    assert boxes[:, 0].min() < 5 and boxes[:, 2].max() > 195
    np.testing.assert_array_equal(boxes, random_crop_boxes(100, 200, 500, 0, 0.2, 0.6))
    assert random_crop_boxes(10, 10, 0, 0).shape == (0, 4)
    with pytest.raises(ValueError, match="min_frac"):
        random_crop_boxes(10, 10, 5, 0, min_frac=0.9, max_frac=0.5)
    with pytest.raises(ValueError, match="height"):
        random_crop_boxes(0, 10, 5, 0)


def test_random_crop_source_per_image_determinism():
    dicts = [{"file_name": "unused.jpg", "height": 60 + i, "width": 90, "image_id": i} for i in (3, 8, 5)]
    source = RandomCropSource(topk=7, seed=1)
    out = source(dicts)
    assert len(out) == 3
    for d, (boxes, scores) in zip(dicts, out):
        assert boxes.shape == (7, 4) and boxes.dtype == np.float32
        np.testing.assert_array_equal(scores, np.ones(7, np.float32))
        assert np.all(boxes[:, 2] <= d["width"]) and np.all(boxes[:, 3] <= d["height"])
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        # Only (seed, image_id) matters: same boxes when drawn alone.
        ref = random_crop_boxes(d["height"], d["width"], 7, image_rng(1, d["image_id"]), 0.1, 0.8)
        np.testing.assert_array_equal(boxes, ref)
    # Order and subset do not change an image's boxes; other ids and other seeds do.
    again = source(dicts[::-1])
    np.testing.assert_array_equal(again[2][0], out[0][0])
    same_size = [{"height": 60, "width": 90, "image_id": i} for i in (1, 2)]
    a, b = source(same_size)
    assert not np.allclose(a[0], b[0])
    assert not np.allclose(RandomCropSource(topk=7, seed=2)(dicts)[0][0], out[0][0])


# ------------------------------------------------------------------------------ registry
def test_registry_and_build():
    assert "selective_search" in PRIOR_SOURCE_REGISTRY and "random_crops" in PRIOR_SOURCE_REGISTRY
    source = build_prior_source("random_crops", topk=5, seed=3)
    assert isinstance(source, RandomCropSource) and source.topk == 5
    assert isinstance(build_prior_source("selective_search", num_workers=0), SelectiveSearchSource)
    with pytest.raises(ValueError, match="unknown prior source 'edge_boxes'.*random_crops.*selective_search"):
        build_prior_source("edge_boxes")


# ------------------------------------------------------------------------------ version-0 cache
class CountingSource(RandomCropSource):
    """Random crops that count their calls; image 2 gets no priors."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def __call__(self, dataset_dicts, model=None):
        self.calls += 1
        out = super().__call__(dataset_dicts, model)
        return [(b[:0], s[:0]) if d["image_id"] == 2 else (b, s) for d, (b, s) in zip(dataset_dicts, out)]


def test_load_or_compute_version0_caches_and_refuses_other_settings(tmp_path):
    dicts = [{"file_name": f"{i}.jpg", "height": 50, "width": 70, "image_id": i} for i in (4, 2, 9)]
    bank = PriorBank(tmp_path / "bank")
    source = CountingSource(topk=6, seed=0)
    v0 = load_or_compute_version0(bank, source, dicts, "toy_train")
    assert source.calls == 1 and v0.version == 0 and bank.versions() == [0]
    expected = source(dicts)
    source.calls = 1
    np.testing.assert_array_equal(v0.boxes_per_image(), [0, 6, 6])  # ids sorted: 2, 4, 9
    for d, (boxes, scores) in zip(dicts, expected):
        got_boxes, got_scores = v0.get(d["image_id"])
        np.testing.assert_array_equal(got_boxes, boxes)
        np.testing.assert_array_equal(got_scores, scores)
    key = v0.meta["info"]["source_key"]
    assert key == version0_cache_key(source, dicts, "toy_train")
    assert key["dataset"] == "toy_train" and key["settings"]["topk"] == 6

    # Second call (dataset order changed, same images): read back, the source is not called.
    again = load_or_compute_version0(bank, source, dicts[::-1], "toy_train")
    assert source.calls == 1
    np.testing.assert_array_equal(again.boxes, v0.boxes)
    np.testing.assert_array_equal(again.scores, v0.scores)

    # Another setting, dataset name or image set: refused, naming both keys and the folder.
    for other_source, other_dicts, name in [
        (CountingSource(topk=6, seed=1), dicts, "toy_train"),
        (source, dicts, "toy_val"),
        (source, dicts[:2], "toy_train"),
        (SelectiveSearchSource(topk=6), dicts, "toy_train"),
    ]:
        with pytest.raises(ValueError, match="other settings") as err:
            load_or_compute_version0(bank, other_source, other_dicts, name)
        message = str(err.value)
        assert str(bank.root) in message
        assert json.dumps(key, sort_keys=True) in message
        requested = version0_cache_key(other_source, other_dicts, name)
        assert json.dumps(requested, sort_keys=True) in message
    assert source.calls == 1
    np.testing.assert_array_equal(bank.read(0).boxes, v0.boxes)  # untouched


def test_version0_cache_key_rejects_bad_dataset_dicts():
    source = RandomCropSource()
    with pytest.raises(ValueError, match="duplicate image ids"):
        version0_cache_key(source, [{"image_id": 1}, {"image_id": 1}], "x")
    with pytest.raises(ValueError, match="image_id"):
        version0_cache_key(source, [{"file_name": "a.jpg"}], "x")
    with pytest.raises(ValueError, match="integer"):
        version0_cache_key(source, [{"image_id": "a"}], "x")
