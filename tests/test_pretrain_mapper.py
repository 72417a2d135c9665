"""JoinDetDatasetMapper: a prior box follows its image through large-scale jitter and flip, priors
that leave the crop are dropped, the crops show the prior's pixels, and the bank version is reported."""

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import transforms as T

from joindet.data.pretrain_mapper import JoinDetDatasetMapper, build_lsj_augmentation
from joindet.priors.active import ActivePriors

HEIGHT, WIDTH = 120, 160
RECT = (70, 40, 100, 64)  # x0, y0, x1, y1 (exclusive): the drawn rectangle's pixels
COLOUR = (200, 60, 120)  # RGB
CROP = 24
IMAGE_ID = 7


@pytest.fixture
def scene(tmp_path):
    """A black 120x160 PNG with one solid rectangle, and a bank whose version 0 has that rectangle as
    the only prior of the image (score 0.9). Returns (dataset dict, ActivePriors, RGB image)."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x0, y0, x1, y1 = RECT
    image[y0:y1, x0:x1] = COLOUR
    path = tmp_path / "rect.png"
    assert cv2.imwrite(str(path), image[:, :, ::-1])  # OpenCV writes BGR
    active = ActivePriors(tmp_path / "bank")
    active.bank.write_version(0, [IMAGE_ID], [np.array([RECT], np.float32)], [np.array([0.9], np.float32)])
    active.set_version(0)
    record = {"file_name": str(path), "height": HEIGHT, "width": WIDTH, "image_id": IMAGE_ID}
    return record, active, image


def _rect_box_from_pixels(image_chw):
    """XYXY (exclusive ends) of the pixels that are closer to the rectangle's colour than to black
    (red channel above half of its value), or None when there are none. image_chw: (3, H, W) uint8."""
    mask = image_chw[0].numpy() > COLOUR[0] // 2
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _assert_crop_is_rectangle(crop, side):
    """crop: (3, S, S) uint8 of a box that encloses exactly the rectangle, whose shorter side is
    ``side`` pixels. Bilinear sampling blends the rectangle's edge with the black outside over about
    one image pixel (up to S / side crop pixels); inside that border the crop is the rectangle's
    colour, and so is the median of the whole crop."""
    colour = torch.tensor(COLOUR, dtype=torch.float32)
    diff = (crop.float() - colour.view(3, 1, 1)).abs().max(dim=0).values  # (S, S)
    m = 1 + int(np.ceil(crop.shape[-1] / side))
    assert diff[m:-m, m:-m].max() <= 2, (m, diff)
    median = crop.flatten(1).float().median(dim=1).values
    assert (median - colour).abs().max() <= 2, median


def _flipped(augs, image, seed):
    """Whether the LSJ draw of ``seed`` flips: the same augmentations replayed on the same RNG state."""
    np.random.seed(seed)
    transforms = T.AugmentationList(augs)(T.AugInput(image.copy()))
    return any(isinstance(t, T.HFlipTransform) for t in transforms.transforms)


@pytest.mark.parametrize("min_scale,max_scale", [(0.6, 1.6), (2.5, 3.0)])
def test_prior_box_follows_the_image_through_lsj_and_flip(scene, min_scale, max_scale):
    """Ten seeded LSJ draws (96 px): at scales 0.6-1.6 the rectangle stays in the crop; at 2.5-3.0 the
    random crop often cuts it off or misses it. Wherever its pixels are, the prior box is; where they
    are not, there is no prior."""
    record, active, image = scene
    min_box_size = 4.0
    augs = build_lsj_augmentation(96, min_scale=min_scale, max_scale=max_scale, flip=True)
    mapper = JoinDetDatasetMapper(augmentations=augs, image_format="RGB", active_priors=active,
                                  crop_size=CROP, min_box_size=min_box_size)
    flips, kept, dropped = [], 0, 0
    for seed in range(10):
        flips.append(_flipped(augs, image, seed))
        np.random.seed(seed)
        out = mapper(dict(record))
        img = out["image"]
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        assert out["instances"].image_size == tuple(img.shape[1:])
        assert max(img.shape[1:]) <= 96  # the LSJ crop
        assert out["prior_version"] == 0
        assert "annotations" not in out
        expected = _rect_box_from_pixels(img)
        boxes = out["instances"].gt_boxes.tensor
        side = 0.0 if expected is None else min(expected[2] - expected[0], expected[3] - expected[1])
        if side < min_box_size - 1.5:
            assert len(boxes) == 0 and out["prior_crops"].shape == (0, 3, CROP, CROP), (seed, boxes)
            dropped += 1
            continue
        if side < min_box_size + 1.5:
            continue  # at the size limit: either outcome is right
        kept += 1
        assert boxes.shape == (1, 4), seed
        np.testing.assert_allclose(boxes[0].numpy(), expected, atol=1.5, err_msg=f"seed {seed}")
        assert out["instances"].gt_classes.tolist() == [0]
        np.testing.assert_allclose(out["instances"].gt_scores.numpy(), [0.9])
        crops = out["prior_crops"]
        assert crops.dtype == torch.uint8 and crops.shape == (1, 3, CROP, CROP)
        _assert_crop_is_rectangle(crops[0], side)
    assert any(flips) and not all(flips), flips  # both flipped and unflipped draws were checked
    if max_scale < 2:
        assert kept == 10
    else:
        assert kept >= 2 and dropped >= 2, (kept, dropped)


def test_priors_outside_the_crop_are_dropped_and_kept_ones_aligned(scene, tmp_path):
    record, active, image = scene
    # version 1: the rectangle (score 0.8) plus a box in the left 40 columns (score 0.5), which the crop removes
    other = np.array([5, 10, 35, 50], np.float32)
    active.bank.write_version(1, [IMAGE_ID], [np.stack([np.array(RECT, np.float32), other])],
                              [np.array([0.8, 0.5], np.float32)])
    active.set_version(1)
    crop_x0, crop_y0 = 40, 20
    augs = [T.CropTransform(crop_x0, crop_y0, 100, 80), T.HFlipTransform(100)]
    mapper = JoinDetDatasetMapper(augmentations=augs, image_format="RGB", active_priors=active,
                                  crop_size=CROP, min_box_size=4.0)
    out = mapper(dict(record))
    assert out["prior_version"] == 1
    assert tuple(out["image"].shape) == (3, 80, 100)
    # the rectangle, cropped then flipped within the 100 px wide crop: x -> 100 - x
    x0, y0, x1, y1 = RECT
    expected = np.array([100 - (x1 - crop_x0), y0 - crop_y0, 100 - (x0 - crop_x0), y1 - crop_y0], np.float32)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), expected[None], atol=1e-4)
    np.testing.assert_allclose(_rect_box_from_pixels(out["image"]), expected)
    np.testing.assert_allclose(out["instances"].gt_scores.numpy(), [0.8])  # the dropped box's score went too
    assert out["prior_crops"].shape == (1, 3, CROP, CROP)
    _assert_crop_is_rectangle(out["prior_crops"][0], float(RECT[3] - RECT[1]))


def test_a_box_that_shrinks_below_min_size_at_the_crop_edge_is_dropped(scene):
    record, active, _ = scene
    # the crop keeps only 3 columns of the rectangle (x 70..72): below min_box_size 4
    augs = [T.CropTransform(0, 0, 73, HEIGHT)]
    mapper = JoinDetDatasetMapper(augmentations=augs, image_format="RGB", active_priors=active,
                                  crop_size=CROP, min_box_size=4.0)
    out = mapper(dict(record))
    assert len(out["instances"]) == 0
    assert out["prior_crops"].shape == (0, 3, CROP, CROP) and out["prior_crops"].dtype == torch.uint8
    assert out["instances"].gt_scores.shape == (0,)


def test_train_topk_keeps_the_best_scored_priors_with_their_crops(scene):
    record, active, image = scene
    # version 1: the rectangle scored 0.7 between two boxes elsewhere (0.9 and 0.2)
    best = np.array([5, 10, 35, 50], np.float32)
    worst = np.array([10, 70, 40, 110], np.float32)
    active.bank.write_version(1, [IMAGE_ID], [np.stack([best, np.array(RECT, np.float32), worst])],
                              [np.array([0.9, 0.7, 0.2], np.float32)])
    active.set_version(1)
    every = JoinDetDatasetMapper(augmentations=[], image_format="RGB", active_priors=active, crop_size=CROP)(dict(record))
    assert len(every["instances"]) == 3  # train_topk 0: all of them
    out = JoinDetDatasetMapper(augmentations=[], image_format="RGB", active_priors=active, crop_size=CROP,
                               train_topk=2)(dict(record))
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), np.stack([best, np.array(RECT, np.float32)]))
    np.testing.assert_allclose(out["instances"].gt_scores.numpy(), [0.9, 0.7])
    assert out["prior_crops"].shape == (2, 3, CROP, CROP)
    assert torch.equal(out["prior_crops"], every["prior_crops"][:2])
    _assert_crop_is_rectangle(out["prior_crops"][1], float(RECT[3] - RECT[1]))
