"""Tests of the built-in clutter domain (joindet.data.clutter): tiny splits under tmp_path, drawn by the
same files-and-registration machinery as the synthetic shapes (joindet.data.synthetic)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances

from joindet.data import clutter, synthetic
from joindet.data.clutter import (
    CLUTTER,
    CLUTTER_CLASSES,
    default_clutter_root,
    generate_clutter_split,
    register_clutter,
    render_clutter_image,
)
from joindet.data.synthetic import (
    MIN_VISIBLE_FRACTION,
    SHAPES,
    SyntheticDomain,
    generate_synthetic_split,
    register_synthetic,
    synthetic_dir_name,
)

from conftest import load_json, read_folder_bytes

SIZE = 64


def test_same_seed_gives_identical_files_and_other_seeds_or_splits_differ(tmp_path):
    a = generate_clutter_split(tmp_path / "a", "train", 6, image_size=SIZE, seed=3)
    b = generate_clutter_split(tmp_path / "b", "train", 6, image_size=SIZE, seed=3)
    c = generate_clutter_split(tmp_path / "c", "train", 6, image_size=SIZE, seed=4)
    v = generate_clutter_split(tmp_path / "a", "val", 6, image_size=SIZE, seed=3)
    assert open(a, "rb").read() == open(b, "rb").read()
    files_a, files_b = read_folder_bytes(tmp_path / "a" / "train"), read_folder_bytes(tmp_path / "b" / "train")
    assert len(files_a) == 6 and files_a == files_b
    files_c, files_v = read_folder_bytes(tmp_path / "c" / "train"), read_folder_bytes(tmp_path / "a" / "val")
    assert all(files_c[n] != files_a[n] for n in files_a) and all(files_v[n] != files_a[n] for n in files_a)
    assert open(c, "rb").read() != open(a, "rb").read() and os.path.isfile(v)
    assert not [p for p in os.listdir(tmp_path / "a") if ".tmp-" in p]
    # The renderer alone is deterministic too, masks and clutter included.
    first = render_clutter_image(np.random.default_rng(7), SIZE, return_clutter=True)
    again = render_clutter_image(np.random.default_rng(7), SIZE, return_clutter=True)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[2], again[2])
    assert [{k: v for k, v in i.items() if k != "mask"} for i in first[1]] == \
        [{k: v for k, v in i.items() if k != "mask"} for i in again[1]]


def test_coco_json_is_well_formed_and_matches_the_drawn_objects(tmp_path):
    json_path = generate_clutter_split(tmp_path, "val", 6, image_size=SIZE, seed=1)
    coco = load_json(json_path)
    assert coco["info"]["description"] == "JoinDet synthetic clutter"
    assert (coco["info"]["min_objects"], coco["info"]["max_objects"]) == (5, 25)
    assert coco["categories"] == [
        {"id": i + 1, "name": n, "supercategory": "clutter object"} for i, n in enumerate(CLUTTER_CLASSES)
    ]
    assert [im["id"] for im in coco["images"]] == list(range(1, 7))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    by_image = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for index, im in enumerate(coco["images"]):
        with Image.open(tmp_path / "val" / im["file_name"]) as pil:
            assert pil.format == "JPEG" and pil.mode == "RGB" and pil.size == (SIZE, SIZE)
        assert 5 <= len(by_image[im["id"]]) <= 25  # many objects per image
        # Redraw the image from its own stream: the file's annotations are exactly its drawn objects.
        rng = np.random.default_rng(synthetic._image_seed_sequence(1, "val", index))
        _, instances = render_clutter_image(rng, SIZE, 5, 25)
        assert [(a["category_id"], a["bbox"], a["area"]) for a in by_image[im["id"]]] == [
            (i["category_id"], i["bbox"], i["area"]) for i in instances]
        for ann in by_image[im["id"]]:
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLUTTER_CLASSES)
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert 0.15 * w * h <= ann["area"] <= w * h


def test_instances_match_their_masks_and_clutter_is_not_annotated():
    fractions, sides = [], []
    for index in range(8):
        image, instances, clutter_mask = render_clutter_image(np.random.default_rng(index), 96, 5, 12,
                                                              return_clutter=True)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 5 <= len(instances) <= 12
        union = np.zeros((96, 96), bool)
        for inst in instances:
            mask = inst["mask"]
            ys, xs = np.nonzero(mask)
            # The box is the extent of the visible pixels: each box edge touches the object's mask.
            assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert inst["area"] == mask.sum() and inst["area"] >= MIN_VISIBLE_FRACTION * inst["full_area"]
            assert not (union & mask).any()  # visible masks never overlap
            union |= mask
            fractions.append(inst["area"] / inst["full_area"])
            sides.append(max(inst["bbox"][2:]))
        # Clutter is drawn (specks, twigs, blades), never part of an object, and much of it lies
        # outside every box: unannotated things the detector must learn to ignore.
        assert clutter_mask.sum() >= 20 and not (clutter_mask & union).any()
        boxes = np.zeros((96, 96), bool)
        for x, y, w, h in (i["bbox"] for i in instances):
            boxes[y:y + h, x:x + w] = True
        assert (clutter_mask & ~boxes).sum() >= 0.5 * clutter_mask.sum()
        # Objects stand out from their surroundings on average (lower contrast than the shapes set).
        contrasts = []
        for inst in instances:
            x, y, w, h = inst["bbox"]
            around = np.zeros((96, 96), bool)
            around[max(0, y - 3): y + h + 3, max(0, x - 3): x + w + 3] = True
            around &= ~union & ~clutter_mask
            if around.sum() >= 10:
                inside = image[inst["mask"]].astype(float).mean(axis=0)
                contrasts.append(np.linalg.norm(inside - image[around].astype(float).mean(axis=0)))
        assert np.median(contrasts) > 30.0
    fractions = np.array(fractions)
    assert (fractions < 0.95).sum() >= 3  # real partial occlusions occur
    assert max(sides) <= 40 * 96 / 256 + 6 and min(sides) >= 3  # small objects (6-9 px floors at 96 px)


def test_every_class_appears_in_a_small_split(tmp_path):
    coco = load_json(generate_clutter_split(tmp_path, "train", 6, image_size=SIZE, seed=0))
    counts = np.bincount([a["category_id"] for a in coco["annotations"]], minlength=len(CLUTTER_CLASSES) + 1)
    assert counts[0] == 0 and (counts[1:] >= 3).all(), counts


def test_cache_is_reused_and_regenerated_when_settings_change(tmp_path):
    json_path = generate_clutter_split(tmp_path, "train", 6, image_size=SIZE, seed=0)
    image_dir = tmp_path / "train"
    stamps = {p: os.stat(image_dir / p).st_mtime_ns for p in os.listdir(image_dir)}
    json_stamp = os.stat(json_path).st_mtime_ns
    assert generate_clutter_split(tmp_path, "train", 6, image_size=SIZE, seed=0) == json_path
    assert os.stat(json_path).st_mtime_ns == json_stamp
    assert {p: os.stat(image_dir / p).st_mtime_ns for p in os.listdir(image_dir)} == stamps

    reference = open(image_dir / "000002.jpg", "rb").read()
    os.remove(image_dir / "000002.jpg")  # a damaged cache is redrawn identically
    generate_clutter_split(tmp_path, "train", 6, image_size=SIZE, seed=0)
    assert open(image_dir / "000002.jpg", "rb").read() == reference
    generate_clutter_split(tmp_path, "train", 6, image_size=72, seed=0)  # other settings: redrawn
    assert {(im["height"], im["width"]) for im in load_json(json_path)["images"]} == {(72, 72)}
    generate_clutter_split(tmp_path, "train", 6, image_size=72, seed=0, max_objects=8)
    assert max(np.bincount([a["image_id"] for a in load_json(json_path)["annotations"]])) <= 8

    # A shapes split asked for in the same folder is not mistaken for the clutter one (and back).
    generate_synthetic_split(tmp_path, "train", 6, image_size=72, seed=0)
    assert load_json(json_path)["info"]["description"] == "JoinDet synthetic shapes"
    generate_clutter_split(tmp_path, "train", 6, image_size=72, seed=0)
    assert load_json(json_path)["info"]["description"] == "JoinDet synthetic clutter"


def test_one_implementation_serves_both_domains(tmp_path, monkeypatch):
    assert isinstance(CLUTTER, SyntheticDomain) and isinstance(SHAPES, SyntheticDomain)
    assert CLUTTER.classes == CLUTTER_CLASSES and CLUTTER.default_objects == (5, 25)
    # generate_clutter_split and register_clutter are the shared functions applied to CLUTTER.
    calls = []
    monkeypatch.setattr(clutter, "generate_split", lambda *a, **k: calls.append(a[0]) or "x")
    assert generate_clutter_split(tmp_path, "train", 2) == "x" and calls == [CLUTTER]
    monkeypatch.setenv("JOINDET_CACHE", str(tmp_path / "cache"))
    assert default_clutter_root() == str(tmp_path / "cache" / "clutter")
    assert synthetic_dir_name(400, 256, 0, CLUTTER) == "clutter_n400_s256_seed0"
    assert synthetic_dir_name(400, 256, 0) == "n400_s256_seed0"


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"image_size": 31}, {"seed": -1}, {"min_objects": 0},
                                    {"min_objects": 9, "max_objects": 8}, {"max_objects": 41}, {"split": "a/b"}])
def test_bad_arguments_raise(tmp_path, kwargs):
    args = {"root": tmp_path, "split": "train", "num_images": 2, "image_size": SIZE}
    args.update(kwargs)
    with pytest.raises(ValueError):
        generate_clutter_split(**args)
    assert not os.listdir(tmp_path)


@pytest.fixture
def prefix():
    name = "joindet_test_clutter"
    yield name
    for suffix in ("_train", "_val", "_train_unlabeled"):
        if name + suffix in DatasetCatalog.list():
            DatasetCatalog.remove(name + suffix)
        if name + suffix in MetadataCatalog.list():
            MetadataCatalog.remove(name + suffix)


def test_register_clutter(tmp_path, prefix):
    names = register_clutter(prefix, root=tmp_path, num_train=6, num_val=3, image_size=SIZE, seed=2)
    assert names == (prefix + "_train", prefix + "_val", prefix + "_train_unlabeled")
    assert not os.listdir(tmp_path)  # lazy: nothing generated before the first load
    train_root = tmp_path / synthetic_dir_name(6, SIZE, 2, CLUTTER)
    val_root = tmp_path / synthetic_dir_name(3, SIZE, 2, CLUTTER)

    train = DatasetCatalog.get(prefix + "_train")
    assert [d["image_id"] for d in train] == list(range(1, 7))
    for d in train:
        assert d["file_name"] == os.path.join(str(train_root), "train", f"{d['image_id'] - 1:06d}.jpg")
        assert len(d["annotations"]) >= 5
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in d["annotations"])
        assert all(0 <= a["category_id"] < len(CLUTTER_CLASSES) for a in d["annotations"])

    unlabeled = DatasetCatalog.get(prefix + "_train_unlabeled")
    assert [d["image_id"] for d in unlabeled] == [d["image_id"] for d in train]
    assert all(set(u) == {"file_name", "height", "width", "image_id"} for u in unlabeled)  # no annotations
    assert [u["file_name"] for u in unlabeled] == [d["file_name"] for d in train]

    val = DatasetCatalog.get(prefix + "_val")
    assert len(val) == 3
    assert not {open(d["file_name"], "rb").read() for d in val} & {open(d["file_name"], "rb").read() for d in train}
    meta = MetadataCatalog.get(prefix + "_val")
    assert meta.thing_classes == list(CLUTTER_CLASSES) and meta.evaluator_type == "coco"
    assert meta.json_file == str(val_root / "val.json") and meta.image_root == str(val_root / "val")
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(CLUTTER_CLASSES))}
    assert meta.synthetic_settings["domain"] == "clutter"
    umeta = MetadataCatalog.get(prefix + "_train_unlabeled")
    assert umeta.labeled_dataset == prefix + "_train" and umeta.thing_classes == list(CLUTTER_CLASSES)

    loader = DatasetCatalog[prefix + "_train"]
    register_clutter(prefix, root=tmp_path, num_train=6, num_val=3, image_size=SIZE, seed=2)
    assert DatasetCatalog[prefix + "_train"] is loader  # same settings: a no-op
    register_clutter(prefix, root=tmp_path, num_train=4, num_val=3, image_size=SIZE, seed=2)
    assert len(DatasetCatalog.get(prefix + "_train")) == 4  # other settings: replaced
    # The shapes registered under the same prefix replace the clutter entries (the domain is in the settings).
    register_synthetic(prefix, root=tmp_path, num_train=4, num_val=3, image_size=SIZE, seed=2)
    assert MetadataCatalog.get(prefix + "_train").thing_classes == list(synthetic.SHAPE_CLASSES)


def test_config_registers_clutter_and_its_low_data_subsets(make_cfg):
    from joindet.config import validate_config
    from joindet.data.datasets import check_dataset_names

    cfg = make_cfg("DATASETS.CLUTTER.NUM_TRAIN", "20", "DATASETS.CLUTTER.NUM_VAL", "4",
                   "DATASETS.CLUTTER.IMAGE_SIZE", str(SIZE), "DATASETS.CLUTTER.SEED", "1")
    full = DatasetCatalog.get("clutter_train")
    assert len(full) == 20 and len(DatasetCatalog.get("clutter_train_unlabeled")) == 20
    assert len(DatasetCatalog.get("clutter_val")) == 4
    assert MetadataCatalog.get("clutter_val").json_file.endswith(
        os.path.join("clutter", "clutter_n4_s64_seed1", "val.json"))
    ids = [d["image_id"] for d in full]
    for name, count in (("clutter_train_10pct", 2), ("clutter_train_1pct", 1)):
        sub = DatasetCatalog.get(name)
        assert len(sub) == count and {d["image_id"] for d in sub} <= set(ids)
        assert MetadataCatalog.get(name).thing_classes == list(CLUTTER_CLASSES)
        assert MetadataCatalog.get(name).low_data_source == "clutter_train"
    expected = sorted(ids[i] for i in np.random.default_rng(0).choice(20, 2, replace=False))
    assert [d["image_id"] for d in DatasetCatalog.get("clutter_train_10pct")] == expected
    check_dataset_names(["clutter_train_10pct", "clutter_val"], "DATASETS.TRAIN")
    with pytest.raises(ValueError, match="clutter_train_10pct"):
        check_dataset_names(["clutter_trian"], "DATASETS.TRAIN")
    for key, bad in (("DATASETS.CLUTTER.NUM_TRAIN", 0), ("DATASETS.CLUTTER.IMAGE_SIZE", 16),
                     ("DATASETS.CLUTTER.SEED", -1)):
        broken = cfg.clone()
        broken.merge_from_list([key, str(bad)])
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            validate_config(broken)


def test_coco_evaluator_of_the_trainer_scores_clutter_val(make_cfg, tmp_path):
    """The path train_net takes on DATASETS.TEST ("clutter_val",): Trainer.build_evaluator (COCOEvaluator on
    the metadata's json_file) after the test loader; perfect detections score AP 100."""
    from joindet.data.mapper import DetrDatasetMapper
    from joindet.engine.trainer import Trainer

    cfg = make_cfg("DATASETS.CLUTTER.NUM_TRAIN", "6", "DATASETS.CLUTTER.NUM_VAL", "3",
                   "DATASETS.CLUTTER.IMAGE_SIZE", str(SIZE), "DATASETS.TEST", "('clutter_val',)")
    val = DatasetCatalog.get("clutter_val")
    mapped = DetrDatasetMapper(cfg, is_train=False)(val[0])
    assert mapped["image"].shape[-2:] == (SIZE, SIZE)
    assert len(DetrDatasetMapper(cfg, is_train=True)(DatasetCatalog.get("clutter_train")[0])["instances"]) >= 1

    evaluator = Trainer.build_evaluator(cfg, "clutter_val", output_folder=str(tmp_path / "inference"))
    evaluator.reset()
    for d in val:
        boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["bbox"]["AP50"] == pytest.approx(100.0)
    assert os.path.isfile(tmp_path / "inference" / "coco_instances_results.json")
