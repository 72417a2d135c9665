"""Tests of the built-in synthetic shapes dataset (tiny splits, written under tmp_path)."""

import os

import numpy as np
import pytest
from PIL import Image

from joindet.data.synthetic import (
    MIN_VISIBLE_FRACTION,
    SHAPE_CLASSES,
    default_synthetic_root,
    generate_synthetic_split,
    register_synthetic,
    render_synthetic_image,
    synthetic_dir_name,
)

from conftest import load_json, read_folder_bytes


def test_same_seed_gives_identical_files_and_other_seeds_or_splits_differ(tmp_path):
    a = generate_synthetic_split(tmp_path / "a", "train", 12, image_size=64, seed=3)
    b = generate_synthetic_split(tmp_path / "b", "train", 12, image_size=64, seed=3)
    c = generate_synthetic_split(tmp_path / "c", "train", 12, image_size=64, seed=4)
    v = generate_synthetic_split(tmp_path / "a", "val", 12, image_size=64, seed=3)
    assert a == os.path.join(str(tmp_path / "a"), "train.json")
    assert open(a, "rb").read() == open(b, "rb").read()
    files_a, files_b = read_folder_bytes(tmp_path / "a" / "train"), read_folder_bytes(tmp_path / "b" / "train")
    assert len(files_a) == 12 and files_a == files_b
    files_c, files_v = read_folder_bytes(tmp_path / "c" / "train"), read_folder_bytes(tmp_path / "a" / "val")
    assert sorted(files_c) == sorted(files_a)
    # Another seed, or another split with the same seed, shares no image at all.
    assert all(files_c[name] != files_a[name] for name in files_a)
    assert all(files_v[name] != files_a[name] for name in files_a)
    assert open(c, "rb").read() != open(a, "rb").read()
    # No temporary folder is left behind.
    assert sorted(p for p in os.listdir(tmp_path / "a") if not p.startswith(".")) == [
        "train", "train.json", "val", "val.json"
    ]
    assert not [p for p in os.listdir(tmp_path / "a") if ".tmp-" in p]


def test_coco_json_is_well_formed_and_boxes_lie_inside(tmp_path):
    json_path = generate_synthetic_split(tmp_path, "val", 12, image_size=96, seed=1, max_objects=6)
    coco = load_json(json_path)
    assert coco["categories"] == [
        {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)
    ]
    assert [im["id"] for im in coco["images"]] == list(range(1, 13))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    per_image = {im["id"]: 0 for im in coco["images"]}
    for im in coco["images"]:
        with Image.open(tmp_path / "val" / im["file_name"]) as pil:
            assert pil.format == "JPEG" and pil.mode == "RGB"
            assert pil.size == (im["width"], im["height"]) == (96, 96)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(SHAPE_CLASSES)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
        # area = visible pixels inside the box; a shape fills a good part of its visible box.
        assert 0.2 * w * h <= ann["area"] <= w * h
        per_image[ann["image_id"]] += 1
    assert all(1 <= n <= 6 for n in per_image.values())
    assert max(per_image.values()) >= 3  # several objects per image do occur


def test_rendered_instances_match_their_masks_and_image():
    for index in range(8):
        image, instances = render_synthetic_image(np.random.default_rng(index), 80, 2, 5)
        assert image.shape == (80, 80, 3) and image.dtype == np.uint8
        assert 2 <= len(instances) <= 5
        union = np.zeros((80, 80), bool)
        for inst in instances:
            mask = inst["mask"]
            ys, xs = np.nonzero(mask)
            # The box is exactly the extent of the final visible pixels, and area is their count.
            assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert inst["area"] == mask.sum()
            # Visible masks of different objects never overlap (later objects hide earlier ones).
            assert not (union & mask).any()
            union |= mask
        # Drawn objects stand out from the pixels around them: the mean colour inside each
        # visible mask differs clearly from the mean of a ring of background just outside it.
        for inst in instances:
            x, y, w, h = inst["bbox"]
            around = np.zeros((80, 80), bool)
            around[max(0, y - 3): y + h + 3, max(0, x - 3): x + w + 3] = True
            around &= ~union
            if around.sum() >= 10:
                inside = image[inst["mask"]].astype(float).mean(axis=0)
                outside = image[around].astype(float).mean(axis=0)
                assert np.linalg.norm(inside - outside) > 30.0


def test_occluded_objects_keep_enough_of_their_pixels():
    # Crowded images: occlusion happens, yet every annotated object keeps at least half its pixels.
    fractions = []
    for index in range(10):
        _, instances = render_synthetic_image(np.random.default_rng(100 + index), 64, 5, 8)
        assert 5 <= len(instances) <= 8
        fractions += [inst["area"] / inst["full_area"] for inst in instances]
        assert instances[-1]["area"] == instances[-1]["full_area"]  # nothing is drawn over the last one
    fractions = np.array(fractions)
    assert MIN_VISIBLE_FRACTION == 0.5
    assert (fractions >= MIN_VISIBLE_FRACTION).all() and (fractions <= 1.0).all()
    assert (fractions < 0.95).sum() >= 3  # real partial occlusions occur


def test_every_class_appears_in_a_small_split(tmp_path):
    coco = load_json(generate_synthetic_split(tmp_path, "train", 40, image_size=64, seed=0))
    counts = np.bincount([a["category_id"] for a in coco["annotations"]], minlength=len(SHAPE_CLASSES) + 1)
    assert counts[0] == 0 and (counts[1:] >= 3).all(), counts


def test_second_call_uses_the_cache_and_stale_splits_are_replaced(tmp_path):
    json_path = generate_synthetic_split(tmp_path, "train", 6, image_size=64, seed=0)
    image_dir = tmp_path / "train"
    stamps = {p: os.stat(image_dir / p).st_mtime_ns for p in os.listdir(image_dir)}
    json_stamp = os.stat(json_path).st_mtime_ns
    assert generate_synthetic_split(tmp_path, "train", 6, image_size=64, seed=0) == json_path
    assert os.stat(json_path).st_mtime_ns == json_stamp
    assert {p: os.stat(image_dir / p).st_mtime_ns for p in os.listdir(image_dir)} == stamps

    # A missing image (e.g. a damaged cache) or different settings regenerate the split.
    reference = open(image_dir / "000003.jpg", "rb").read()
    os.remove(image_dir / "000003.jpg")
    generate_synthetic_split(tmp_path, "train", 6, image_size=64, seed=0)
    assert open(image_dir / "000003.jpg", "rb").read() == reference
    generate_synthetic_split(tmp_path, "train", 6, image_size=72, seed=0)
    coco = load_json(json_path)
    assert {(im["height"], im["width"]) for im in coco["images"]} == {(72, 72)}
    with Image.open(image_dir / "000003.jpg") as pil:
        assert pil.size == (72, 72)

    # An interrupted run (image folder without JSON, plus a left-over temporary folder) is redone.
    other = tmp_path / "other"
    (other / "val").mkdir(parents=True)
    (other / "val" / "000000.jpg").write_bytes(b"partial")
    (other / ".val.tmp-dead").mkdir()
    generate_synthetic_split(other, "val", 3, image_size=64)
    assert sorted(os.listdir(other / "val")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert open(other / "val" / "000000.jpg", "rb").read()[:2] == b"\xff\xd8"
    assert not (other / ".val.tmp-dead").exists()


def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINDET_CACHE", str(tmp_path / "cache"))
    assert default_synthetic_root() == os.path.join(str(tmp_path / "cache"), "synthetic")
    monkeypatch.delenv("JOINDET_CACHE")
    assert default_synthetic_root() == os.path.join(os.path.expanduser("~"), ".cache", "joindet", "synthetic")
    assert synthetic_dir_name(400, 256, 0) == "n400_s256_seed0"
    assert len({synthetic_dir_name(n, s, k) for n in (10, 100) for s in (64, 256) for k in (0, 1)}) == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": 0},
        {"num_images": 2.5},
        {"image_size": 31},
        {"image_size": True},
        {"seed": -1},
        {"min_objects": 0},
        {"min_objects": 4, "max_objects": 3},
        {"max_objects": 100},
        {"split": ""},
        {"split": "a/b"},
        {"split": ".."},
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs):
    args = {"root": tmp_path, "split": "train", "num_images": 2, "image_size": 64}
    args.update(kwargs)
    with pytest.raises(ValueError):
        generate_synthetic_split(**args)
    assert not os.listdir(tmp_path)


@pytest.fixture
def catalogs():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    prefix = "joindet_test_synth"
    yield prefix, DatasetCatalog, MetadataCatalog
    for suffix in ("_train", "_val", "_train_unlabeled"):
        if prefix + suffix in DatasetCatalog.list():
            DatasetCatalog.remove(prefix + suffix)
        if prefix + suffix in MetadataCatalog.list():
            MetadataCatalog.remove(prefix + suffix)


def test_register_synthetic(tmp_path, catalogs):
    from detectron2.structures import BoxMode

    prefix, DatasetCatalog, MetadataCatalog = catalogs
    names = register_synthetic(prefix, root=tmp_path, num_train=10, num_val=4, image_size=64, seed=2)
    assert names == (prefix + "_train", prefix + "_val", prefix + "_train_unlabeled")
    assert not os.listdir(tmp_path)  # lazy: nothing generated before the first load

    train = DatasetCatalog.get(prefix + "_train")
    train_root = tmp_path / synthetic_dir_name(10, 64, 2)
    coco = load_json(train_root / "train.json")
    assert [d["image_id"] for d in train] == list(range(1, 11))
    expected = {}
    for ann in coco["annotations"]:
        expected.setdefault(ann["image_id"], []).append((ann["category_id"] - 1, ann["bbox"]))
    for d in train:
        assert d["file_name"] == os.path.join(str(train_root), "train", f"{d['image_id'] - 1:06d}.jpg")
        assert (d["height"], d["width"]) == (64, 64)
        got = [(a["category_id"], list(a["bbox"])) for a in d["annotations"]]
        assert got == expected[d["image_id"]]
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in d["annotations"])
        assert all(0 <= a["category_id"] < len(SHAPE_CLASSES) for a in d["annotations"])

    unlabeled = DatasetCatalog.get(prefix + "_train_unlabeled")
    assert [d["image_id"] for d in unlabeled] == [d["image_id"] for d in train]
    for u, d in zip(unlabeled, train):
        assert set(u) == {"file_name", "height", "width", "image_id"}
        assert (u["file_name"], u["height"], u["width"]) == (d["file_name"], d["height"], d["width"])

    val = DatasetCatalog.get(prefix + "_val")
    assert len(val) == 4 and os.path.exists(tmp_path / synthetic_dir_name(4, 64, 2) / "val.json")
    # Train and val never share an image.
    val_bytes = {open(d["file_name"], "rb").read() for d in val}
    assert not val_bytes & {open(d["file_name"], "rb").read() for d in train}

    meta = MetadataCatalog.get(prefix + "_val")
    assert meta.thing_classes == list(SHAPE_CLASSES)
    assert meta.evaluator_type == "coco"
    assert meta.json_file == os.path.join(str(tmp_path), synthetic_dir_name(4, 64, 2), "val.json")
    assert meta.image_root == os.path.join(str(tmp_path), synthetic_dir_name(4, 64, 2), "val")
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(SHAPE_CLASSES))}

    # Same settings: a no-op (the very same loader stays registered).
    loader = DatasetCatalog[prefix + "_train"]
    register_synthetic(prefix, root=tmp_path, num_train=10, num_val=4, image_size=64, seed=2)
    assert DatasetCatalog[prefix + "_train"] is loader
    # Different settings: both catalogs are replaced.
    register_synthetic(prefix, root=tmp_path, num_train=5, num_val=4, image_size=64, seed=2)
    assert DatasetCatalog[prefix + "_train"] is not loader
    assert len(DatasetCatalog.get(prefix + "_train")) == 5
    assert len(DatasetCatalog.get(prefix + "_train_unlabeled")) == 5
    assert MetadataCatalog.get(prefix + "_train").image_root == os.path.join(
        str(tmp_path), synthetic_dir_name(5, 64, 2), "train"
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"num_train": 0}, {"num_val": 0}, {"image_size": 16}, {"seed": -2}, {"name_prefix": ""}],
)
def test_register_bad_arguments_raise(tmp_path, kwargs, catalogs):
    prefix, DatasetCatalog, _ = catalogs
    args = {"name_prefix": prefix, "root": tmp_path}
    args.update(kwargs)
    with pytest.raises(ValueError):
        register_synthetic(**args)
    assert prefix + "_train" not in DatasetCatalog.list()


def test_json_scores_perfect_predictions_as_ap_one_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    json_path = generate_synthetic_split(tmp_path, "val", 8, image_size=64, seed=5)
    gt = COCO(json_path)
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in load_json(json_path)["annotations"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0) and evaluator.stats[1] == pytest.approx(1.0)
