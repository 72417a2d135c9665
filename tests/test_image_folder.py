"""Tests of unlabelled image folders as pretraining sets (files written under tmp_path)."""
import io
import logging

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from joindet.data.image_folder import load_image_folder, register_image_folder


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(48, 64)).save(root / "a_rgb.jpg", quality=90)
    Image.fromarray(_rgb(40, 50)[..., 0]).save(root / "b_gray.png")
    Image.fromarray(np.dstack([_rgb(36, 33, 1), np.full((36, 33), 128, np.uint8)]), "RGBA").save(root / "sub" / "c_rgba.png")
    Image.fromarray(_rgb(60, 40, 2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "d_palette.png")
    (root / "e_corrupt.jpg").write_bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 4)).save(buf, format="JPEG", quality=90)
    (root / "f_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(_rgb(8, 8, 5)).save(root / "sub" / "g_tiny.png")
    (root / "notes.txt").write_text("not an image")
    return root


GOOD = {"a_rgb.jpg": (48, 64), "b_gray.png": (40, 50), "d_palette.png": (60, 40), "sub/c_rgba.png": (36, 33)}


def test_load_keeps_good_images(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="joindet"):
        dicts = load_image_folder(folder)
    rel = [str(d["file_name"])[len(str(folder)) + 1:] for d in dicts]
    assert rel == sorted(GOOD)  # exact set, sorted by relative path
    assert [d["image_id"] for d in dicts] == [0, 1, 2, 3]
    for d, name in zip(dicts, rel):
        assert (d["height"], d["width"]) == GOOD[name]
        image = read_image(d["file_name"], format="RGB")  # what the mapper does
        assert image.shape == (d["height"], d["width"], 3) and image.dtype == np.uint8

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "2 corrupt" in message and "1 smaller than 32 px" in message and "4 kept" in message
    assert "e_corrupt.jpg" in message and "f_truncated.jpg" in message and "sub/g_tiny.png" in message

    assert load_image_folder(folder) == dicts  # stable across calls
    tiny_kept = load_image_folder(folder, min_size=8)
    assert len(tiny_kept) == 5 and tiny_kept[-1]["file_name"].endswith("sub/g_tiny.png")


def test_exif_rotated_jpeg_reports_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x70 (w x h), displayed 70 wide and 40 high
    Image.fromarray(_rgb(70, 40)).save(tmp_path / "rotated.jpg", exif=exif)
    (d,) = load_image_folder(tmp_path)
    assert (d["height"], d["width"]) == (40, 70)
    assert read_image(d["file_name"], format="RGB").shape == (40, 70, 3)


def test_empty_missing_and_unusable_folders(tmp_path, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable image in .*empty.*0 image files"):
        load_image_folder(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(folder / "notes.txt")
    with pytest.raises(ValueError, match="2 corrupt.*0 kept.*e_corrupt.jpg"):
        load_image_folder(folder, min_size=100)
    with pytest.raises(ValueError, match="min_size"):
        load_image_folder(folder, min_size=0)


def test_register_image_folder(folder, tmp_path):
    name = "joindet_test_image_folder"
    try:
        assert register_image_folder(name, folder) == name
        meta = MetadataCatalog.get(name)
        assert meta.image_root == str(folder) and meta.evaluator_type is None
        assert len(DatasetCatalog.get(name)) == 4

        loader = DatasetCatalog[name]
        register_image_folder(name, folder)  # same folder: no-op
        assert DatasetCatalog[name] is loader

        other = tmp_path / "other"
        other.mkdir()
        Image.fromarray(_rgb(40, 40)).save(other / "x.png")
        register_image_folder(name, other)  # different folder: replaces
        assert MetadataCatalog.get(name).image_root == str(other)
        (d,) = DatasetCatalog.get(name)
        assert d["file_name"] == str(other / "x.png") and d["image_id"] == 0
        with pytest.raises(FileNotFoundError):
            register_image_folder("joindet_test_missing", tmp_path / "missing")
    finally:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
