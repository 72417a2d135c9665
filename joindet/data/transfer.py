"""Datasets of the transfer (fine-tuning) experiments: VOC scored with COCO-style AP, and seeded
low-data subsets (1% / 10% of COCO train2017).

**VOC with COCO AP.** JoinDet (after DETReg) reports COCO-style AP on VOC. ``voc_to_coco_json``
writes a registered Detectron2 VOC dataset (e.g. the built-in ``voc_2007_test`` under
``$DETECTRON2_DATASETS/VOC2007``) as a COCO annotation file, and ``register_voc_coco`` registers a
view of it (``voc_2007_test_coco``) whose metadata has ``json_file`` and
``evaluator_type="coco"``, so ``COCOEvaluator`` scores it. The conversion:

* images get integer ids ``1..N`` in the order of the source dataset (the ``ImageSets/Main/<split>.txt``
  order); the registered view's dicts carry the same ids (``image_id``; the VOC name, e.g.
  ``"000001"``, is kept as ``voc_image_id``), since COCO evaluation matches predictions by id;
* boxes are the Detectron2 dicts' boxes (``XYXY_ABS`` with VOC's 1-based ``xmin, ymin`` moved by
  -1, as ``load_voc_instances`` does) converted to ``XYWH_ABS``; ``area = w * h``;
* categories ``1..20`` with the VOC class names, in ``thing_classes`` order (the metadata gets
  ``thing_dataset_id_to_contiguous_id = {i + 1: i}``);
* "difficult" objects: Detectron2's ``load_voc_instances`` keeps them and records no flag (it
  keeps them for training on purpose), so every object is an ordinary ground-truth box
  (``iscrowd 0``). COCO AP has no "difficult" notion (``iscrowd`` regions are matched by
  intersection over the detection, which is not VOC's rule); this is the COCO-format VOC
  evaluation of DETReg-style papers, not the VOC-devkit AP50.

The JSON is written atomically; it is created at registration when the source's files are there
and it is missing, and checked (rewritten if it differs) each time the view is loaded.

**VOC 07+12 trainval for training:** nothing to register, list both of Detectron2's sets:
``DATASETS.TRAIN ("voc_2007_trainval", "voc_2012_trainval")`` (same class order as the test set).

**Low-data subsets.** ``low_data_split`` draws ``max(1, round(fraction * N))`` image ids with
``numpy.random.default_rng(seed)`` from the sorted image ids of a dataset and records them in
``<out_dir>/<dataset>_<pct>pct_seed<seed>.json``; ``register_low_data`` registers the subset. The
draw depends only on (ids, fraction, seed): the same in every process and on every rank
(no Python hashing, no rank). Images without annotations are kept in the draw (Detectron2's
``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` drops them later, as for the full set). Subsets are
meant for training; their metadata is the source's (``json_file``, ``evaluator_type``, classes),
so evaluating one with ``COCOEvaluator`` needs ``evaluate(img_ids=...)`` with the subset's ids, or
the left-out images count as missed.
"""
import functools
import json
import logging
import math
import numbers
import os

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..utils.atomic import write_json_atomic

__all__ = [
    "LOW_DATA_SUBSETS",
    "VOC_COCO_SOURCES",
    "default_transfer_root",
    "voc_to_coco_json",
    "register_voc_coco",
    "low_data_split_path",
    "low_data_split",
    "register_low_data",
    "register_transfer_datasets",
]

logger = logging.getLogger(__name__)

# (name, source, fraction) of the low-data subsets used by the configs, all with seed 0.
LOW_DATA_SUBSETS = (
    ("coco_2017_train_1pct", "coco_2017_train", 0.01),
    ("coco_2017_train_10pct", "coco_2017_train", 0.10),
    ("synth_train_1pct", "synth_train", 0.01),
    ("synth_train_10pct", "synth_train", 0.10),
    ("clutter_train_1pct", "clutter_train", 0.01),
    ("clutter_train_10pct", "clutter_train", 0.10),
)
# VOC sets registered as "<name>_coco" views scored with COCO AP.
VOC_COCO_SOURCES = ("voc_2007_test",)


def default_transfer_root():
    """``$JOINDET_CACHE/transfer`` if ``JOINDET_CACHE`` is set (non-empty), else ``~/.cache/joindet/transfer``."""
    cache = os.environ.get("JOINDET_CACHE")
    base = os.path.expanduser(cache) if cache else os.path.join(os.path.expanduser("~"), ".cache", "joindet")
    return os.path.join(base, "transfer")


def _read_json(path):
    """The JSON content of ``path``, or None when it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_if_changed(obj, path):
    """Write ``obj`` unless ``path`` already holds exactly it. Returns True when it wrote."""
    current = _read_json(path)
    if current == obj:
        return False
    if current is not None:
        logger.warning("Replacing %s: its content no longer matches its source", path)
    write_json_atomic(path, obj, separators=(",", ":"))
    return True


def _get_dicts(dataset_name):
    if not isinstance(dataset_name, str) or dataset_name not in DatasetCatalog.list():
        raise ValueError(f"dataset {dataset_name!r} is not registered in Detectron2's DatasetCatalog")
    dicts = DatasetCatalog.get(dataset_name)
    if not isinstance(dicts, list):
        raise ValueError(f"dataset {dataset_name!r} did not load as a list of dicts")
    return dicts


# --------------------------------------------------------------------------- VOC -> COCO
def _voc_to_coco(dataset_name):
    """Load a VOC-style dataset and build its COCO dict.

    Returns (coco: dict, dicts: the source dicts with integer ``image_id`` 1..N and ``voc_image_id``).
    """
    dicts = _get_dicts(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    classes = metadata.get("thing_classes")
    if not classes:
        raise ValueError(f"dataset {dataset_name!r} has no thing_classes in its metadata")
    images, annotations, out_dicts = [], [], []
    for index, record in enumerate(dicts):
        missing = [k for k in ("file_name", "image_id", "height", "width") if k not in record]
        if missing:
            raise ValueError(f"dataset {dataset_name!r}: record {index} lacks {missing}")
        image_id = index + 1
        images.append({
            "id": image_id,
            "file_name": os.path.basename(record["file_name"]),
            "height": int(record["height"]),
            "width": int(record["width"]),
            "voc_image_id": str(record["image_id"]),
        })
        for obj in record.get("annotations", []):
            category = int(obj["category_id"])
            if not 0 <= category < len(classes):
                raise ValueError(
                    f"dataset {dataset_name!r}: image {record['image_id']!r} has category_id {category}, "
                    f"outside 0..{len(classes) - 1}")
            x, y, w, h = (float(v) for v in BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYWH_ABS))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category + 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            })
        out_dicts.append({**record, "image_id": image_id, "voc_image_id": record["image_id"]})
    coco = {
        "info": {
            "description": f"{dataset_name} in COCO format (joindet.data.transfer)",
            "source_dataset": dataset_name,
            "year": metadata.get("year", ""),
            "split": metadata.get("split", ""),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "voc"} for i, name in enumerate(classes)],
    }
    return coco, out_dicts


def voc_to_coco_json(dataset_name, json_path):
    """Write the registered VOC-style dataset ``dataset_name`` as a COCO annotation file.

    Args:
        dataset_name (str): a registered dataset whose dicts hold ``annotations`` with
            ``bbox``/``bbox_mode``/``category_id`` (0-based into the metadata's ``thing_classes``),
            e.g. Detectron2's ``voc_2007_test``.
        json_path (str): output file; written atomically, left untouched when it already holds the same.

    Returns:
        str: ``json_path``. See the module docstring for ids, boxes and the "difficult" objects.
    """
    coco, _ = _voc_to_coco(dataset_name)
    json_path = os.fspath(json_path)
    _write_if_changed(coco, json_path)
    return json_path


def _load_voc_coco(source, json_path):
    coco, dicts = _voc_to_coco(source)
    _write_if_changed(coco, json_path)
    return dicts


def _voc_source_present(source):
    metadata = MetadataCatalog.get(source)
    dirname, split = metadata.get("dirname"), metadata.get("split")
    return bool(dirname and split) and os.path.isfile(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"))


def _replace_registration(name, loader, metadata, settings):
    """Register ``name`` (replacing an entry with other ``transfer_settings``). Returns False if unchanged."""
    if name in DatasetCatalog.list():
        if name in MetadataCatalog.list() and MetadataCatalog.get(name).get("transfer_settings") == settings:
            return False
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(transfer_settings=settings, **metadata)
    return True


def register_voc_coco(name="voc_2007_test_coco", source="voc_2007_test", json_dir=None):
    """Register ``name``: the VOC dataset ``source`` scored with COCO AP.

    Its dicts are the source's with integer ``image_id`` (module docstring); its metadata has
    ``json_file`` (``<json_dir>/<name>.json``; ``json_dir`` defaults to ``default_transfer_root()``),
    ``image_root``, ``evaluator_type="coco"``, ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id = {1: 0, ..., 20: 19}`` and the source's ``dirname``/``year``/
    ``split``. The JSON is written now if it is missing and the source's files exist, and
    checked on every load. Registering the same settings again does nothing.

    Returns:
        str: ``name``.
    """
    if source not in DatasetCatalog.list():
        raise ValueError(f"VOC source dataset {source!r} is not registered")
    classes = MetadataCatalog.get(source).get("thing_classes")
    if not classes:
        raise ValueError(f"VOC source dataset {source!r} has no thing_classes in its metadata")
    json_dir = os.path.abspath(os.path.expanduser(os.fspath(json_dir or default_transfer_root())))
    json_path = os.path.join(json_dir, f"{name}.json")
    src_meta = MetadataCatalog.get(source)
    dirname = src_meta.get("dirname", "")
    metadata = {
        "json_file": json_path,
        "image_root": os.path.join(dirname, "JPEGImages") if dirname else "",
        "evaluator_type": "coco",
        "thing_classes": list(classes),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
        "voc_source": source,
        "dirname": dirname,
        "year": src_meta.get("year", ""),
        "split": src_meta.get("split", ""),
    }
    settings = {"kind": "voc_coco", "source": source, "json_file": json_path, "dirname": dirname,
                "classes": list(classes)}
    _replace_registration(name, functools.partial(_load_voc_coco, source, json_path), metadata, settings)
    if not os.path.isfile(json_path) and _voc_source_present(source):
        try:
            voc_to_coco_json(source, json_path)
        except Exception as e:  # a broken VOC folder must not stop runs that do not use it
            logger.warning("Could not convert %s to %s now (retried when %s is loaded): %s", source, json_path, name, e)
    return name


# --------------------------------------------------------------------------- low-data subsets
def _check_fraction_seed(fraction, seed):
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(fraction) \
            or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return float(fraction), int(seed)


def low_data_split_path(dataset_name, fraction, seed=0, out_dir=None):
    """Path of the split file: ``<out_dir>/<dataset>_<pct>pct_seed<seed>.json``, e.g.
    ``coco_2017_train_1pct_seed0.json``; a non-integer percentage uses ``p`` for the point
    (``0.5%`` -> ``0p5pct``). ``out_dir`` defaults to ``default_transfer_root()``."""
    fraction, seed = _check_fraction_seed(fraction, seed)
    pct = format(round(fraction * 100.0, 6), "g").replace(".", "p")
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir or default_transfer_root())))
    return os.path.join(out_dir, f"{dataset_name}_{pct}pct_seed{seed}.json")


def _draw_ids(dataset_name, dicts, fraction, seed):
    """The split record of ``dicts``: ``max(1, round(fraction * N))`` ids drawn without replacement."""
    ids = []
    for index, record in enumerate(dicts):
        if "image_id" not in record:
            raise ValueError(f"dataset {dataset_name!r}: record {index} has no image_id")
        image_id = record["image_id"]
        if isinstance(image_id, np.integer):
            image_id = int(image_id)
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise ValueError(f"dataset {dataset_name!r}: image_id must be an int or a str, got {image_id!r}")
        ids.append(image_id)
    if not ids:
        raise ValueError(f"dataset {dataset_name!r} is empty")
    if len({type(i) for i in ids}) > 1:
        raise ValueError(f"dataset {dataset_name!r} mixes integer and string image ids")
    ids.sort()
    duplicates = [a for a, b in zip(ids, ids[1:]) if a == b]
    if duplicates:
        raise ValueError(f"dataset {dataset_name!r} has duplicate image ids, e.g. {duplicates[0]!r}")
    count = max(1, int(round(fraction * len(ids))))
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return {
        "dataset": dataset_name,
        "fraction": fraction,
        "seed": seed,
        "num_images": count,
        "num_source_images": len(ids),
        "image_ids": sorted(ids[i] for i in chosen),
    }


def _split_and_write(dataset_name, dicts, fraction, seed, out_dir):
    record = _draw_ids(dataset_name, dicts, fraction, seed)
    path = low_data_split_path(dataset_name, fraction, seed, out_dir)
    _write_if_changed(record, path)
    return path, record


def low_data_split(dataset_name, fraction, seed=0, out_dir=None):
    """Draw a seeded low-data subset of a registered dataset and record it in a JSON file.

    ``max(1, round(fraction * N))`` of the N image ids (sorted) are drawn without replacement with
    ``numpy.random.default_rng(seed)``. The file (``low_data_split_path``) holds ``dataset``,
    ``fraction``, ``seed``, ``num_images`` (drawn), ``num_source_images`` (N) and ``image_ids``
    (sorted). An existing file with the same content is left as is; one that differs (the source
    changed) is replaced, with a warning. Writes are atomic.

    Args:
        dataset_name (str): registered dataset; its dicts need unique ``image_id`` (all int or all str).
        fraction (float): in (0, 1].
        seed (int): >= 0.
        out_dir (str): folder of the split files (default ``default_transfer_root()``).

    Returns:
        str: the split file's path.
    """
    fraction, seed = _check_fraction_seed(fraction, seed)
    path, _ = _split_and_write(dataset_name, _get_dicts(dataset_name), fraction, seed, out_dir)
    return path


def _copy_new_metadata(name, source):
    """Copy to ``name`` the source metadata that appeared since registration (``load_coco_json``
    sets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` only when it loads)."""
    target = MetadataCatalog.get(name)
    for key, value in MetadataCatalog.get(source).as_dict().items():
        if key not in ("name", "transfer_settings") and target.get(key, None) is None:
            target.set(**{key: value})


def _load_low_data(name, source, fraction, seed, out_dir):
    dicts = _get_dicts(source)
    _copy_new_metadata(name, source)
    _, record = _split_and_write(source, dicts, fraction, seed, out_dir)
    keep = set(record["image_ids"])
    return [d for d in dicts if d["image_id"] in keep]


def register_low_data(name, source, fraction, seed=0, out_dir=None):
    """Register ``name`` as the seeded ``fraction`` subset of the registered dataset ``source``.

    Nothing is read until ``name`` is loaded; loading reads ``source``, writes / checks the split
    file (``low_data_split``) and returns the source's dicts whose ``image_id`` was drawn, in the
    source's order. Metadata: a copy of the source's (``thing_classes``, ``json_file``,
    ``evaluator_type``, ...; keys the source gets when it loads, such as ``thing_classes`` of a
    ``register_coco_instances`` set, are copied at load) plus ``low_data_source``,
    ``low_data_fraction``, ``low_data_seed`` and ``low_data_file``. Registering again with the same
    settings (and unchanged source metadata) does nothing; otherwise the entry is replaced.

    Returns:
        str: ``name``.
    """
    fraction, seed = _check_fraction_seed(fraction, seed)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if source not in DatasetCatalog.list():
        raise ValueError(f"source dataset {source!r} of the low-data subset {name!r} is not registered")
    if name == source:
        raise ValueError(f"a low-data subset cannot replace its source ({name!r})")
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir or default_transfer_root())))
    split_file = low_data_split_path(source, fraction, seed, out_dir)
    metadata = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
    metadata.pop("transfer_settings", None)
    metadata.update(low_data_source=source, low_data_fraction=fraction, low_data_seed=seed, low_data_file=split_file)
    settings = {"kind": "low_data", "source": source, "fraction": fraction, "seed": seed, "out_dir": out_dir,
                "source_metadata": repr(sorted(metadata.items(), key=lambda kv: kv[0]))}
    loader = functools.partial(_load_low_data, name, source, fraction, seed, out_dir)
    _replace_registration(name, loader, metadata, settings)
    return name


def register_transfer_datasets(low_data_dir=None, voc_json_dir=None):
    """Register the transfer datasets (cheap: nothing is loaded, apart from a one-time VOC conversion).

    * ``coco_2017_train_1pct``, ``coco_2017_train_10pct`` (seed 0) and, when ``synth_train`` /
      ``clutter_train`` are registered (call this after ``register_synthetic`` / ``register_clutter``),
      ``synth_train_1pct``, ``synth_train_10pct``, ``clutter_train_1pct``, ``clutter_train_10pct``
      (seed 0), with split files in ``low_data_dir``;
    * ``voc_2007_test_coco`` (COCO-AP view of ``voc_2007_test``), its JSON in ``voc_json_dir``.

    Sources that are not registered are skipped. Both folders default to
    ``default_transfer_root()``; calling again with the same arguments does nothing.

    Returns:
        list[str]: the names registered.
    """
    names = []
    for name, source, fraction in LOW_DATA_SUBSETS:
        if source in DatasetCatalog.list():
            names.append(register_low_data(name, source, fraction, seed=0, out_dir=low_data_dir))
    for source in VOC_COCO_SOURCES:
        if source in DatasetCatalog.list():
            names.append(register_voc_coco(f"{source}_coco", source, json_dir=voc_json_dir or low_data_dir))
    return names
