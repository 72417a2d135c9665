"""Transfer datasets: VOC scored with COCO AP (a fake VOC2007 folder in the real layout), a fake COCO
set, and seeded low-data subsets that are identical across processes."""
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode, Boxes, Instances

from joindet.data.transfer import (
    low_data_split,
    low_data_split_path,
    register_low_data,
    register_transfer_datasets,
    register_voc_coco,
    voc_to_coco_json,
)

# Fake VOC2007 test split: file id -> (width, height, [(class, xmin, ymin, xmax, ymax, difficult)]),
# VOC's 1-based inclusive pixel coordinates.
VOC_IMAGES = {
    "000001": (64, 48, [("cat", 11, 6, 40, 30, 0)]),
    "000004": (40, 56, [("dog", 1, 1, 40, 56, 0), ("cat", 5, 10, 20, 30, 1)]),
    "000002": (50, 50, [("dog", 21, 21, 45, 49, 0)]),
}


@pytest.fixture
def names():
    """Unique dataset names for one test, removed from both catalogs afterwards."""
    created = []

    def _name(prefix):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        created.append(name)
        return name

    yield _name
    for name in created:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _write_voc(root):
    dirname = root / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (dirname / sub).mkdir(parents=True)
    for fileid, (w, h, objects) in VOC_IMAGES.items():
        Image.new("RGB", (w, h), (120, 30, 200)).save(dirname / "JPEGImages" / f"{fileid}.jpg")
        xml_objects = "".join(
            f"<object><name>{c}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for c, x0, y0, x1, y1, d in objects
        )
        (dirname / "Annotations" / f"{fileid}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{fileid}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{xml_objects}</annotation>"
        )
    (dirname / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in VOC_IMAGES))
    return str(dirname)


def _perfect_outputs(dicts):
    """Model outputs equal to the ground truth of Detectron2 dataset dicts (score 1)."""
    outputs = []
    for d in dicts:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)
        outputs.append({"instances": inst})
    return outputs


def _coco_ap(dataset_name, dicts, outputs, img_ids=None):
    evaluator = COCOEvaluator(dataset_name, tasks=("bbox",), distributed=False, use_fast_impl=False)
    evaluator.reset()
    evaluator.process(dicts, outputs)
    return evaluator.evaluate(img_ids=img_ids)["bbox"]


def test_voc_as_coco_json_and_ap(tmp_path, names):
    voc_name = names("fake_voc_2007_test")
    register_pascal_voc(voc_name, _write_voc(tmp_path), "test", 2007)

    json_path = voc_to_coco_json(voc_name, tmp_path / "direct.json")
    coco = json.loads((tmp_path / "direct.json").read_text())
    assert str(json_path) == str(tmp_path / "direct.json")
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    assert [(im["id"], im["voc_image_id"], im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        (1, "000001", "000001.jpg", 64, 48), (2, "000004", "000004.jpg", 40, 56), (3, "000002", "000002.jpg", 50, 50)]
    cat, dog = VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1
    # xmin/ymin move by -1 (Detectron2's loader); w = xmax - (xmin - 1); the difficult cat is kept.
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in coco["annotations"]] == [
        (1, cat, [10.0, 5.0, 30.0, 25.0], 750.0, 0),
        (2, dog, [0.0, 0.0, 40.0, 56.0], 2240.0, 0),
        (2, cat, [4.0, 9.0, 16.0, 21.0], 336.0, 0),
        (3, dog, [20.0, 20.0, 25.0, 29.0], 725.0, 0),
    ]

    view = names("fake_voc_2007_test_coco")
    register_voc_coco(view, voc_name, json_dir=tmp_path / "json")
    meta = MetadataCatalog.get(view)
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(VOC_CLASSES)
    assert meta.json_file == str(tmp_path / "json" / f"{view}.json")
    assert os.path.isfile(meta.json_file)  # eager: the source's files exist
    assert json.loads(open(meta.json_file).read()) == coco
    mtime = os.stat(meta.json_file).st_mtime_ns
    register_voc_coco(view, voc_name, json_dir=tmp_path / "json")  # same settings: nothing happens
    dicts = DatasetCatalog.get(view)
    assert os.stat(meta.json_file).st_mtime_ns == mtime  # checked on load, unchanged
    assert [(d["image_id"], d["voc_image_id"]) for d in dicts] == [(1, "000001"), (2, "000004"), (3, "000002")]

    outputs = _perfect_outputs(dicts)
    assert _coco_ap(view, dicts, outputs)["AP"] == pytest.approx(100.0)
    # A box moved by half its width is a miss at every IoU threshold >= 0.5.
    outputs[0]["instances"].pred_boxes.tensor[0] += torch.tensor([15.0, 0.0, 15.0, 0.0])
    worse = _coco_ap(view, dicts, outputs)
    assert worse["AP"] < 80.0 and worse["AP-dog"] == pytest.approx(100.0)


def _write_coco(root, num_images, category_ids=(3, 7)):
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    rng = np.random.default_rng(5)
    for i in range(num_images):
        image_id = 100 + 7 * i  # not 1..N: ids are matched as they are
        Image.new("RGB", (32, 24), (10, 200, 90)).save(image_dir / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 32, "height": 24})
        for _ in range(1 + i % 2):
            x, y = (float(v) for v in rng.integers(0, 12, 2))
            w, h = (float(v) for v in rng.integers(6, 12, 2))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(category_ids[len(annotations) % 2]),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(json_file), str(image_dir)


def test_coco_ap_full_set_and_low_data_subset(tmp_path, names):
    coco_name = names("fake_coco")
    register_coco_instances(coco_name, {}, *_write_coco(tmp_path, 10))
    subset = names("fake_coco_50pct")
    register_low_data(subset, coco_name, 0.5, seed=3, out_dir=tmp_path / "splits")  # before the source loads
    assert MetadataCatalog.get(subset).get("thing_classes") is None

    dicts = DatasetCatalog.get(coco_name)
    assert _coco_ap(coco_name, dicts, _perfect_outputs(dicts))["AP"] == pytest.approx(100.0)
    sub_dicts = DatasetCatalog.get(subset)
    split = json.loads(open(low_data_split_path(coco_name, 0.5, 3, tmp_path / "splits")).read())
    assert split["num_images"] == 5 and [d["image_id"] for d in sub_dicts] == split["image_ids"]
    meta = MetadataCatalog.get(subset)
    assert meta.evaluator_type == "coco" and meta.json_file == MetadataCatalog.get(coco_name).json_file
    assert meta.thing_classes == ["class3", "class7"]  # appeared when the source loaded
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    outputs = _perfect_outputs(sub_dicts)
    assert _coco_ap(subset, sub_dicts, outputs, img_ids=split["image_ids"])["AP"] == pytest.approx(100.0)
    assert _coco_ap(subset, sub_dicts, outputs)["AP"] < 100.0  # the left-out images count as missed


def _register_fifty(name):
    """50 images with VOC-style string ids, registered in a shuffled order."""
    ids = [f"2008_{i:06d}" for i in range(50)]
    order = np.random.default_rng(9).permutation(50)
    DatasetCatalog.register(name, lambda: [{"image_id": ids[i], "file_name": f"{ids[i]}.jpg"} for i in order])
    return sorted(ids)


_SUBPROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from detectron2.data import DatasetCatalog
    from joindet.data.transfer import low_data_split
    ids = [f"2008_{i:06d}" for i in range(50)]
    order = np.random.default_rng(9).permutation(50)
    DatasetCatalog.register("fifty", lambda: [{"image_id": ids[i]} for i in order])
    path = low_data_split("fifty", 0.1, seed=0, out_dir=sys.argv[1])
    print(json.dumps(json.load(open(path))["image_ids"]))
""")


def test_low_data_split_is_seeded_and_process_independent(tmp_path, names):
    name = names("fifty")
    sorted_ids = _register_fifty(name)
    path = low_data_split(name, 0.1, seed=0, out_dir=tmp_path)
    assert path == str(tmp_path / f"{name}_10pct_seed0.json")
    record = json.loads(open(path).read())
    expected = sorted(sorted_ids[i] for i in np.random.default_rng(0).choice(50, size=5, replace=False))
    assert record == {"dataset": name, "fraction": 0.1, "seed": 0, "num_images": 5, "num_source_images": 50,
                      "image_ids": expected}
    assert len(set(record["image_ids"])) == 5 and set(record["image_ids"]) <= set(sorted_ids)

    procs = [
        subprocess.Popen([sys.executable, "-c", _SUBPROCESS, str(tmp_path / f"proc{h}")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": str(h)})
        for h in (1, 2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert [json.loads(out.strip().splitlines()[-1]) for out, _ in results] == [expected, expected]

    other = json.loads(open(low_data_split(name, 0.1, seed=1, out_dir=tmp_path)).read())["image_ids"]
    assert other != expected and len(other) == 5
    assert json.loads(open(low_data_split(name, 1.0, out_dir=tmp_path)).read())["image_ids"] == sorted_ids
    assert json.loads(open(low_data_split(name, 0.001, out_dir=tmp_path)).read())["num_images"] == 1  # at least 1
    assert low_data_split_path(name, 0.005, 2, tmp_path).endswith(f"{name}_0p5pct_seed2.json")


def test_low_data_split_reuse_and_bad_input(tmp_path, names):
    name = names("fifty")
    _register_fifty(name)
    path = low_data_split(name, 0.1, seed=0, out_dir=tmp_path)
    stat = os.stat(path)
    assert low_data_split(name, 0.1, seed=0, out_dir=tmp_path) == path
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # reused
    good = open(path).read()
    record = json.loads(good)
    record["image_ids"] = record["image_ids"][:2]
    open(path, "w").write(json.dumps(record))  # stale content (e.g. the source changed) is replaced
    low_data_split(name, 0.1, seed=0, out_dir=tmp_path)
    assert json.loads(open(path).read()) == json.loads(good)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    for bad in (0, 0.0, -0.1, 1.5, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
            low_data_split(name, bad, out_dir=tmp_path)
        with pytest.raises(ValueError, match="fraction"):
            register_low_data(names("bad"), name, bad, out_dir=tmp_path)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        low_data_split(name, 0.1, seed=-1, out_dir=tmp_path)
    with pytest.raises(ValueError, match="not registered"):
        low_data_split("no_such_dataset_xyz", 0.1, out_dir=tmp_path)
    with pytest.raises(ValueError, match="not registered"):
        register_low_data(names("orphan"), "no_such_dataset_xyz", 0.1, out_dir=tmp_path)
    dup = names("dup")
    DatasetCatalog.register(dup, lambda: [{"image_id": 1}, {"image_id": 2}, {"image_id": 1}])
    with pytest.raises(ValueError, match="duplicate image ids"):
        low_data_split(dup, 0.5, out_dir=tmp_path)


def test_register_transfer_datasets(synthetic_cache, tmp_path):
    """Registration reads nothing: COCO and VOC are absent here; the synthetic subset loads."""
    registered = register_transfer_datasets(tmp_path / "low", tmp_path / "voc")
    assert registered == ["coco_2017_train_1pct", "coco_2017_train_10pct", "synth_train_1pct",
                          "synth_train_10pct", "clutter_train_1pct", "clutter_train_10pct", "voc_2007_test_coco"]
    meta = MetadataCatalog.get("coco_2017_train_10pct")
    assert meta.evaluator_type == "coco" and meta.json_file == MetadataCatalog.get("coco_2017_train").json_file
    assert len(meta.thing_classes) == 80 and meta.low_data_fraction == 0.1 and meta.low_data_seed == 0
    assert meta.low_data_file == str(tmp_path / "low" / "coco_2017_train_10pct_seed0.json")
    voc = MetadataCatalog.get("voc_2007_test_coco")
    assert voc.evaluator_type == "coco" and voc.json_file == str(tmp_path / "voc" / "voc_2007_test_coco.json")
    assert not (tmp_path / "low").exists() and not (tmp_path / "voc").exists()

    sub = DatasetCatalog.get("synth_train_10pct")  # 10% of the 8 tiny synthetic images: 1
    full_ids = sorted(d["image_id"] for d in DatasetCatalog.get("synth_train"))
    assert len(sub) == 1 and sub[0]["image_id"] == full_ids[int(np.random.default_rng(0).choice(8, 1)[0])]
    assert MetadataCatalog.get("synth_train_10pct").thing_classes == MetadataCatalog.get("synth_train").thing_classes
    assert register_transfer_datasets(tmp_path / "low", tmp_path / "voc") == registered  # idempotent
