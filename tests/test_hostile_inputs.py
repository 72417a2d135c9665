"""Hostile image files (written under tmp_path) in an unlabelled image folder and in a COCO-format set:
each is used correctly (orientation, 3 channels uint8, 16-bit scaled) or skipped with a logged reason;
Detectron2's MapDataset then serves the other images, skip counts are logged by reason, a dataset with
nothing usable is an error naming it, and the version-0 prior sources give a bad image no priors."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from detectron2.data import DatasetCatalog, DatasetFromList, MapDataset, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances

from joindet.data.image_folder import load_image_folder, register_image_folder
from joindet.data.image_io import SkippedImages, UnusableImage, read_image
from joindet.data.mapper import DetrDatasetMapper
from joindet.data.pretrain_mapper import JoinDetDatasetMapper, ResizeScaleKeepingPixels, build_lsj_augmentation
from joindet.priors.active import ActivePriors
from joindet.priors.ncut_source import NCutBackboneSource, NCutColorSource
from joindet.priors.random_crops import RandomCropSource
from joindet.priors.selective_search import SelectiveSearchSource

from conftest import TINY_IMAGE_SIZE, build_cfg


def _blocks(h, w):
    """uint8 (h, w, 3): four flat colour quadrants (JPEG keeps them; any rotation or flip moves them)."""
    image = np.empty((h, w, 3), np.uint8)
    image[: h // 2, : w // 2] = (220, 30, 30)
    image[: h // 2, w // 2:] = (30, 220, 30)
    image[h // 2:, : w // 2] = (30, 30, 220)
    image[h // 2:, w // 2:] = (230, 230, 40)
    return image


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(array, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


GRAY16 = (np.arange(48 * 40, dtype=np.int64).reshape(48, 40) * 34).astype(np.uint16)  # 0 .. 65246
GRAY8 = (np.arange(40 * 36).reshape(40, 36) % 251).astype(np.uint8)
ONE_PIXEL = np.array([[[10, 200, 30]]], np.uint8)


def _write_hostile_files(root):
    """Write every hostile case under ``root``. Returns {file name: expected}, where expected is the
    skip reason (str) or the RGB image read_image must return (array) with its JPEG tolerance."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}

    Image.fromarray(_blocks(48, 64)).save(root / "rgb.jpg", quality=95)
    expected["rgb.jpg"] = (_blocks(48, 64), 6)
    Image.fromarray(GRAY8, mode="L").save(root / "gray.png")
    expected["gray.png"] = (np.repeat(GRAY8[..., None], 3, axis=2), 0)
    Image.fromarray(_blocks(40, 50)).quantize(colors=4).save(root / "palette.png")
    assert Image.open(root / "palette.png").mode == "P"
    expected["palette.png"] = (_blocks(40, 50), 0)
    rgba = np.dstack([_blocks(36, 44), np.full((36, 44), 90, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    expected["rgba.png"] = (_blocks(36, 44), 0)  # alpha dropped, as Detectron2 does
    Image.fromarray(_blocks(40, 40)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    assert Image.open(root / "cmyk.jpg").mode == "CMYK"
    expected["cmyk.jpg"] = (_blocks(40, 40), 6)
    Image.fromarray(GRAY16).save(root / "gray16.png")
    assert Image.open(root / "gray16.png").mode == "I;16"
    scaled = np.round(GRAY16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    expected["gray16.png"] = (np.repeat(scaled[..., None], 3, axis=2), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 70 high; shown rotated 90 degrees clockwise: 70 wide x 40 high
    Image.fromarray(_blocks(70, 40)).save(root / "exif_rotated.jpg", quality=95, exif=exif)
    expected["exif_rotated.jpg"] = (np.rot90(_blocks(70, 40), k=-1), 6)
    Image.fromarray(ONE_PIXEL).save(root / "one_pixel.png")
    expected["one_pixel.png"] = (ONE_PIXEL, 0)

    Image.fromarray(np.full((10, 20000, 3), 128, np.uint8)).save(root / "wide.png")
    expected["wide.png"] = "extreme_aspect_ratio"
    (root / "zero_bytes.jpg").write_bytes(b"")
    expected["zero_bytes.jpg"] = "empty_file"
    (root / "random_bytes.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8).tobytes())
    expected["random_bytes.jpg"] = "not_an_image"
    data = _encoded(_noise(64, 64, 2), "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated"
    data = _encoded(_noise(64, 64, 3), "PNG")
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    expected["truncated.png"] = "truncated"
    return expected


USED = {"rgb.jpg", "gray.png", "palette.png", "rgba.png", "cmyk.jpg", "gray16.png", "exif_rotated.jpg", "one_pixel.png"}
SKIPPED = {"wide.png": "extreme_aspect_ratio", "zero_bytes.jpg": "empty_file", "random_bytes.jpg": "not_an_image",
           "truncated.jpg": "truncated", "truncated.png": "truncated"}


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "hostile"
    return root, _write_hostile_files(root)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records]


def _assert_image(image, want, tolerance):
    assert image.dtype == np.uint8 and image.shape == want.shape, (image.shape, want.shape)
    diff = np.abs(image.astype(np.int16) - want.astype(np.int16))
    assert diff.mean() <= tolerance and np.median(diff) <= tolerance, diff.mean()


# --------------------------------------------------------------------------- the one reader
def test_read_image_uses_or_rejects_each_hostile_file(hostile):
    root, expected = hostile
    assert set(expected) == USED | set(SKIPPED)
    for name, want in expected.items():
        if isinstance(want, str):
            with pytest.raises(UnusableImage) as info:
                read_image(root / name)
            assert info.value.reason == want, (name, info.value)
            assert str(root / name) in str(info.value)
        else:
            image = read_image(root / name)
            _assert_image(image, *want)
    # 16-bit: scaled, not clipped (PIL's own conversion would turn every value above 255 white)
    gray16 = read_image(root / "gray16.png")[..., 0]
    assert gray16[0, 0] == 0 and gray16[-1, -1] == round(int(GRAY16[-1, -1]) * 255 / 65535) == 254
    assert len(np.unique(gray16)) > 200
    # BGR, as INPUT.FORMAT may ask
    np.testing.assert_array_equal(read_image(root / "palette.png", format="BGR"), _blocks(40, 50)[..., ::-1])
    # a size that differs from the dataset's record, and a file that does not exist
    with pytest.raises(UnusableImage, match="size_mismatch"):
        read_image(root / "rgb.jpg", expected_size=(64, 48))
    with pytest.raises(UnusableImage) as info:
        read_image(root / "gone.png")
    assert info.value.reason == "missing"


def test_image_folder_listing_skips_with_reasons_then_a_vanished_file_is_skipped_by_the_mapper(hostile, joindet_log):
    root, expected = hostile
    Image.fromarray(_blocks(32, 32)).save(root / "vanishing.png")
    dicts = load_image_folder(root, min_size=1)  # min_size 1: the 1x1 image is listed (the default 32 skips it)
    names = [d["file_name"].rsplit("/", 1)[1] for d in dicts]
    assert set(names) == USED | {"vanishing.png"}
    (listing,) = [m for m in _messages(joindet_log) if m.startswith("Image folder")]
    assert ("4 corrupt (empty_file: 1, not_an_image: 1, truncated: 2), 0 smaller than 1 px, "
            "1 of an extreme aspect ratio, 9 kept") in listing
    rotated = dicts[names.index("exif_rotated.jpg")]
    assert (rotated["height"], rotated["width"]) == (40, 70)  # as read_image returns it

    (root / "vanishing.png").unlink()  # between listing and reading
    active = ActivePriors(root.parent / "bank")
    crops = RandomCropSource(topk=3, seed=0)(dicts)
    active.bank.write_version(0, [d["image_id"] for d in dicts], [b for b, _ in crops], [s for _, s in crops])
    active.set_version(0)
    # no augmentation: the mapped image is exactly what read_image gives (orientation, channels, scaling)
    mapper = JoinDetDatasetMapper(augmentations=[], image_format="RGB", active_priors=active, crop_size=16,
                                  min_box_size=0.0, dataset_names=("hostile_folder",))
    for d, name in zip(dicts, names):
        out = mapper(dict(d))
        if name == "vanishing.png":
            assert out is None
            continue
        image = out["image"].permute(1, 2, 0).numpy()
        _assert_image(image, *expected[name])
        assert out["instances"].image_size == image.shape[:2]
        assert out["prior_crops"].shape == (len(out["instances"]), 3, 16, 16)
    assert mapper.skipped.counts == {"missing": 1} and mapper.skipped.used == len(USED)
    assert any("skipping" in m and "vanishing.png: missing" in m for m in _messages(joindet_log))

    # through Detectron2's MapDataset: the vanished file's index yields another image
    dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
    served = [dataset[i]["file_name"].rsplit("/", 1)[1] for i in range(len(dicts))]
    assert set(served) <= USED and served[names.index("vanishing.png")] != "vanishing.png"
    assert [s for s, n in zip(served, names) if n != "vanishing.png"] == [n for n in names if n != "vanishing.png"]
    assert mapper.skipped.counts == {"missing": 2}
    assert "2 image reads skipped in this process (missing: 2)" in mapper.skipped.summary()


def test_lsj_keeps_a_pixel_on_each_side_of_thin_and_tiny_images(tmp_path):
    """At the smallest LSJ scale a 400 x 20 image rounds to 0 px high: Detectron2's ResizeScale fails,
    ResizeScaleKeepingPixels makes it 1 px. A 1 x 1 image is upscaled to the LSJ size."""
    thin = np.zeros((20, 400, 3), np.uint8)
    with pytest.raises(ValueError):
        T.AugmentationList([T.ResizeScale(0.1, 0.1, 64, 64)])(T.AugInput(thin.copy()))
    aug_input = T.AugInput(thin.copy(), boxes=np.array([[0, 0, 400, 20]], np.float32))
    T.AugmentationList([ResizeScaleKeepingPixels(0.1, 0.1, 64, 64)])(aug_input)
    assert aug_input.image.shape == (1, 6, 3)
    np.testing.assert_allclose(aug_input.boxes, [[0, 0, 6, 1]])  # the box follows the same resize

    images = {"one.png": (ONE_PIXEL, [0.0, 0.0, 1.0, 1.0]), "thin.png": (_noise(20, 400, 4), [10.0, 2.0, 390.0, 18.0])}
    records = []
    for image_id, (name, (array, _)) in enumerate(images.items()):
        Image.fromarray(array).save(tmp_path / name)
        records.append({"file_name": str(tmp_path / name), "height": array.shape[0], "width": array.shape[1],
                        "image_id": image_id})
    active = ActivePriors(tmp_path / "bank")
    active.bank.write_version(0, [0, 1], [np.array([box], np.float32) for _, box in images.values()],
                              [np.ones(1, np.float32)] * 2)
    active.set_version(0)
    mapper = JoinDetDatasetMapper(augmentations=build_lsj_augmentation(64, 0.1, 2.0), image_format="RGB",
                                  active_priors=active, crop_size=16, min_box_size=1.0)
    for seed in range(20):
        np.random.seed(seed)
        for record in records:
            out = mapper(dict(record))
            h, w = out["image"].shape[1:]
            assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
            assert 1 <= h <= 64 and 1 <= w <= 64
            boxes = out["instances"].gt_boxes.tensor
            assert ((boxes[:, 2] <= w) & (boxes[:, 3] <= h) & (boxes[:, :2] >= 0).all(1)).all()
    one = mapper(dict(records[0]))
    assert torch.equal(one["image"][:, 0, 0], torch.tensor([10, 200, 30], dtype=torch.uint8))  # upscaled 1x1
    assert mapper.skipped.total == 0


# --------------------------------------------------------------------------- COCO-format set
def _coco_dataset(root, names, sizes, dataset_name):
    """Register a COCO-format set over ``names`` (files under ``root``), one box per image."""
    images, annotations = [], []
    for i, name in enumerate(names, start=1):
        h, w = sizes.get(name, (64, 64))
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, max(w / 2, 1), max(h / 2, 1)],
                            "area": max(w / 2, 1) * max(h / 2, 1), "iscrowd": 0})
    path = root.parent / f"{dataset_name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    for catalog in (DatasetCatalog, MetadataCatalog):
        if dataset_name in catalog.list():
            catalog.remove(dataset_name)
    register_coco_instances(dataset_name, {}, str(path), str(root))
    return dataset_name


@pytest.fixture
def coco_names():
    registered = []
    yield registered
    for name in registered:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)


SIZES = {"rgb.jpg": (48, 64), "gray.png": (40, 36), "palette.png": (40, 50), "rgba.png": (36, 44),
         "cmyk.jpg": (40, 40), "gray16.png": (48, 40), "exif_rotated.jpg": (40, 70), "one_pixel.png": (1, 1),
         "wide.png": (10, 20000)}


def test_coco_set_supervised_mapper_skips_bad_files_and_the_loader_serves_the_rest(hostile, coco_names, joindet_log):
    root, _ = hostile
    files = sorted(USED | set(SKIPPED)) + ["missing.jpg"]
    name = _coco_dataset(root, files, SIZES, "joindet_test_hostile_coco")
    coco_names.append(name)
    dicts = DatasetCatalog.get(name)
    cfg = build_cfg(["DATASETS.TRAIN", f"('{name}',)"])
    mapper = DetrDatasetMapper(cfg, is_train=True)
    mapper.skipped.summary_period_s = 0.0  # a summary at every skip
    for d in dicts:
        file = d["file_name"].rsplit("/", 1)[1]
        out = mapper(d)
        if file in USED:
            assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3, file
            assert max(out["image"].shape[1:]) == TINY_IMAGE_SIZE, file  # the supervised resize (64 px)
            assert len(out["instances"]) == 1 and out["instances"].gt_classes.tolist() == [0]
        else:
            assert out is None, file
    want = {"extreme_aspect_ratio": 1, "empty_file": 1, "not_an_image": 1, "truncated": 2, "missing": 1}
    assert dict(mapper.skipped.counts) == want
    messages = _messages(joindet_log)
    for file, reason in [*SKIPPED.items(), ("missing.jpg", "missing")]:
        assert any(f"{file}: {reason}" in m for m in messages), file
    assert f"DetrDatasetMapper (train) on {name} (images in {root})" in messages[-1]
    assert ("6 image reads skipped in this process (empty_file: 1, extreme_aspect_ratio: 1, missing: 1, "
            "not_an_image: 1, truncated: 2), 8 used") in messages[-1]

    # Detectron2's train loader (MapDataset retries another image) never serves a bad file
    loader = build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=4, num_workers=0)
    batches = iter(loader)
    served = [x["file_name"].rsplit("/", 1)[1] for _ in range(6) for x in next(batches)]
    assert len(served) == 24 and set(served) <= USED

    # the same set as unlabelled pretraining images: LSJ + priors, the same decisions
    active = ActivePriors(root.parent / "bank")
    crops = RandomCropSource(topk=4, seed=0)(dicts)
    active.bank.write_version(0, [d["image_id"] for d in dicts], [b for b, _ in crops], [s for _, s in crops])
    active.set_version(0)
    pretrain = JoinDetDatasetMapper(augmentations=build_lsj_augmentation(64, 0.1, 2.0), image_format="RGB",
                                    active_priors=active, crop_size=16, min_box_size=1.0, dataset_names=(name,))
    for d in dicts:
        out = pretrain(d)
        if d["file_name"].rsplit("/", 1)[1] in USED:
            assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
            assert max(out["image"].shape[1:]) <= 64 and len(out["prior_crops"]) == len(out["instances"])
        else:
            assert out is None
    assert dict(pretrain.skipped.counts) == want and pretrain.skipped.used == len(USED)


def test_a_dataset_with_nothing_usable_is_an_error_naming_it(tmp_path, coco_names):
    # an image folder: at listing
    bad = tmp_path / "bad_folder"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"no usable image in {bad}: .*2 corrupt"):
        load_image_folder(bad)

    # an image folder whose files all disappear after listing: at training time
    folder = tmp_path / "vanishing_folder"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(_noise(40, 40, i)).save(folder / f"{i}.png")
    folder_name = register_image_folder("joindet_test_vanishing_folder", folder)
    coco_names.append(folder_name)
    dicts = DatasetCatalog.get(folder_name)
    active = ActivePriors(tmp_path / "bank")
    active.bank.write_version(0, [d["image_id"] for d in dicts], [np.zeros((0, 4), np.float32)] * 4,
                              [np.zeros(0, np.float32)] * 4)
    active.set_version(0)
    for p in folder.iterdir():
        p.unlink()
    mapper = JoinDetDatasetMapper(augmentations=build_lsj_augmentation(32, 0.5, 1.5), image_format="RGB",
                                  active_priors=active, dataset_names=(folder_name,))
    loader = build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=2, num_workers=0)
    with pytest.raises(RuntimeError, match=f"{folder_name} \\(images in {folder}\\): 4 consecutive images "
                                           "could not be used \\(missing: 4"):
        next(iter(loader))

    # a COCO-format set of bad files: with its size known, and (larger than the limit) without
    root = tmp_path / "coco_bad"
    root.mkdir()
    for count, num_images in ((5, 5), (SkippedImages("x").max_consecutive, None)):
        files = [f"{i}.jpg" for i in range(count)]
        for f in files:
            (root / f).write_bytes(b"")
        name = _coco_dataset(root, files, {}, f"joindet_test_bad_coco_{count}")
        coco_names.append(name)
        cfg = build_cfg(["DATASETS.TRAIN", f"('{name}',)"])
        mapper = DetrDatasetMapper(cfg, is_train=True, num_images=num_images)
        loader = build_detection_train_loader(dataset=DatasetCatalog.get(name), mapper=mapper, total_batch_size=2,
                                              num_workers=0)
        with pytest.raises(RuntimeError, match=f"on {name} .*: {count} consecutive images could not be used "
                                               f"\\(empty_file: {count}"):
            next(iter(loader))


# --------------------------------------------------------------------------- version-0 prior sources
def _hostile_records(root):
    files = sorted(USED | set(SKIPPED)) + ["missing.jpg"]
    return [{"file_name": str(root / f), "height": SIZES.get(f, (64, 64))[0], "width": SIZES.get(f, (64, 64))[1],
             "image_id": i} for i, f in enumerate(files)]


def _bad(record):
    return record["file_name"].rsplit("/", 1)[1] not in USED


def test_selective_search_gives_a_bad_image_no_priors(hostile, joindet_log):
    root, _ = hostile
    records = _hostile_records(root)
    source = SelectiveSearchSource(topk=5, num_workers=0)
    results = source(records)
    for record, (boxes, scores) in zip(records, results):
        assert boxes.shape == (scores.shape[0], 4)
        assert (boxes.shape[0] == 0) == _bad(record), record["file_name"]
    failed = dict(source.last_failed)
    assert {f.rsplit("/", 1)[1]: p.split(")")[0] for f, p in failed.items()} == {
        **{f: f"skipped ({r}" for f, r in SKIPPED.items()}, "missing.jpg": "skipped (missing"}
    assert any("6 unreadable images (no priors)" in m for m in _messages(joindet_log))


def test_ncut_color_gives_a_bad_image_no_priors_and_counts_it(hostile, joindet_log):
    root, _ = hostile
    records = _hostile_records(root)
    source = NCutColorSource(patch=4, num_rounds=1, solver="dense")
    results = source(records)
    assert len(results) == len(records)
    for record, (boxes, scores) in zip(records, results):
        assert boxes.shape == (scores.shape[0], 4)
        if _bad(record):
            assert boxes.shape[0] == 0
    assert dict(source.last_skipped.counts) == {"extreme_aspect_ratio": 1, "empty_file": 1, "not_an_image": 1,
                                                "truncated": 2, "missing": 1}
    assert any(m.startswith("ncut_color priors: 6 image reads skipped") and "8 used" in m
               for m in _messages(joindet_log))


class _ColourFeatures(nn.Module):
    """A stand-in detector for ``ncut_backbone``: its 'backbone features' are each image's 8 x 8
    patch-mean colours."""

    def backbone_patch_features(self, batched_inputs, name):
        feats = torch.stack([F.adaptive_avg_pool2d(x["image"].float()[None], 8)[0] for x in batched_inputs])
        feats = feats.permute(0, 2, 3, 1) + 1.0
        valid = torch.ones(feats.shape[:3], dtype=torch.bool)
        return feats, valid, [tuple(x["image"].shape[1:]) for x in batched_inputs]


def test_ncut_backbone_gives_a_bad_image_no_priors(hostile, joindet_log):
    root, _ = hostile
    records = _hostile_records(root)
    cfg = build_cfg()
    mapper = DetrDatasetMapper(cfg, is_train=False)
    source = NCutBackboneSource(mapper=mapper, batch_size=3, tau=0.99, num_rounds=1, solver="dense")
    model = _ColourFeatures().train()
    results = source(records, model=model)
    assert model.training  # restored after the pass
    assert len(results) == len(records)
    for record, (boxes, scores) in zip(records, results):
        assert boxes.shape == (scores.shape[0], 4) and np.isfinite(boxes).all()
        if _bad(record):
            assert boxes.shape[0] == 0
    assert any(b.shape[0] > 0 for b, _ in results)
    assert mapper.skipped.total == 6 and mapper.skipped.used == 8  # each image read once: none substituted
    assert any("NCut priors: 6 of 14 images could not be used" in m for m in _messages(joindet_log))
