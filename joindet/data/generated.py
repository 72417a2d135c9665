"""The machinery every built-in generated domain shares: from a renderer to files on disk and datasets.

Shared machinery. Every built-in generated domain (these shapes; the small objects in clutter of
``joindet.data.clutter``) is a :class:`SyntheticDomain`: its class names, its version and its
``render(rng, image_size, min_objects, max_objects)`` function. One implementation, this module, turns a
domain into files and datasets: the per-image seed streams, the COCO JSON, the cache check, the
temporary-folder + rename write under an inter-process lock (``generate_split``), the cache folders
(``default_cache_root``, ``split_dir_name``) and the Detectron2 registration (``register_domain``).

The renderers live beside this module: the shapes in :mod:`joindet.data.synthetic`, the small objects in
clutter in :mod:`joindet.data.clutter`.
"""
import contextlib
import dataclasses
import functools
import json
import numbers
import os
import shutil
import tempfile
import zlib
from typing import Callable, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "GENERATED_SET_DEFAULTS",
    "MIN_VISIBLE_FRACTION",
    "SyntheticDomain",
    "generate_split",
    "default_cache_root",
    "split_dir_name",
    "register_domain",
]

# The default settings of a generated set, of every domain (shapes, clutter): the one place they are
# written. register_domain (so register_synthetic and register_clutter), generate_split, DATASETS.SYNTHETIC /
# DATASETS.CLUTTER of joindet/config.py, dataloader.synthetic of the LazyConfigs and the bank tools'
# --synthetic-* options all take them from here.
GENERATED_SET_DEFAULTS = {"num_train": 400, "num_val": 100, "image_size": 256, "seed": 0}

MIN_VISIBLE_FRACTION = 0.5  # an annotated object keeps at least this fraction of its pixels (every renderer)

_COLOUR_CANDIDATES = 64
_JPEG_QUALITY = 95
_MAX_IMAGE_SIZE = 4096
_MAX_OBJECTS = 20  # the default objects_limit of a domain


# --------------------------------------------------------------------------- argument checks
def _check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return int(value)


def _check_split(split):
    if not isinstance(split, str) or not split or split in (".", "..") or split.startswith("."):
        raise ValueError(f"split must be a non-empty name not starting with '.', got {split!r}")
    if "/" in split or os.sep in split or (os.altsep and os.altsep in split):
        raise ValueError(f"split must be a plain name without path separators, got {split!r}")
    return split


def _check_object_counts(min_objects, max_objects, limit=_MAX_OBJECTS):
    min_objects = _check_int("min_objects", min_objects, 1, limit)
    max_objects = _check_int("max_objects", max_objects, 1, limit)
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
    return min_objects, max_objects



# --------------------------------------------------------------------------- drawing helpers of the renderers
def _pick_colour(rng, background_mean, neighbour_colours, amplitude, min_background_distance, min_object_distance):
    """An object colour (float64 (3,)) contrasted from the background and overlapped objects.

    Every texture extreme (colour - amplitude, colour, colour + amplitude, clipped) must be at
    least ``min_background_distance`` from ``background_mean``; the colour must be at least
    ``min_object_distance`` from each of ``neighbour_colours``. Among random candidates the first
    that passes is taken, else the one with the largest margin.
    """
    candidates = rng.integers(0, 256, (_COLOUR_CANDIDATES, 3)).astype(np.float64)
    extremes = np.clip(candidates[:, None, :] + np.array([-amplitude, 0.0, amplitude])[None, :, None], 0, 255)
    bg_margin = np.linalg.norm(extremes - background_mean, axis=2).min(axis=1) - min_background_distance
    margin = bg_margin
    if neighbour_colours:
        others = np.asarray(neighbour_colours, np.float64)
        obj_dist = np.linalg.norm(candidates[:, None, :] - others[None], axis=2).min(axis=1)
        margin = np.minimum(margin, obj_dist - min_object_distance)
    passing = np.flatnonzero(margin >= 0)
    return candidates[passing[0] if passing.size else int(np.argmax(margin))]


# --------------------------------------------------------------------------- domains
@dataclasses.dataclass(frozen=True)
class SyntheticDomain:
    """One built-in generated domain: everything the shared files-and-registration machinery
    (``generate_split``, ``register_domain``) needs to know about it.

    Attributes:
        name: short name, e.g. ``"shapes"``; recorded in the registered metadata.
        description: the COCO ``info.description`` (part of the cache key: two domains never share
            a cached split).
        classes: category names; COCO ids ``1..K`` in this order, contiguous ids ``0..K-1``.
        supercategory: the COCO ``supercategory`` of every category.
        version: bumped whenever the drawing changes, so that cached splits of older code are redrawn.
        render: ``render(rng, image_size, min_objects, max_objects) -> (image, instances)``: ``image``
            uint8 (S, S, 3) RGB, ``instances`` dicts with ``category_id`` (1..K), ``bbox`` (integer
            XYWH inside the image) and ``area``; ``rng`` (``numpy.random.Generator``) is the only
            source of randomness.
        default_objects: the (min, max) number of objects per image of the registered datasets.
        objects_limit: the largest ``max_objects`` accepted.
        cache_name: subfolder of the JoinDet cache holding this domain's splits (``default_cache_root``).
        dir_prefix: prefix of the per-settings folder (``split_dir_name``), so that the domains'
            folders differ even when one root is given to both.
    """

    name: str
    description: str
    classes: Tuple[str, ...]
    supercategory: str
    version: int
    render: Callable
    default_objects: Tuple[int, int] = (1, 5)
    objects_limit: int = _MAX_OBJECTS
    cache_name: str = "synthetic"
    dir_prefix: str = ""


# --------------------------------------------------------------------------- files on disk
def _image_seed_sequence(seed, split, index):
    """The random stream of image ``index`` of a split: child ``index`` of SeedSequence([seed,
    crc32(split)]), so splits never share a stream and an image does not depend on the split's size."""
    return np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8"))], spawn_key=(index,))


def _split_info(domain, split, num_images, image_size, seed, min_objects, max_objects):
    return {
        "description": domain.description,
        "generator_version": domain.version,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "image_format": f"jpeg-q{_JPEG_QUALITY}",
    }


def _split_is_complete(json_path, image_dir, info):
    """True when the JSON exists with the same settings and every image it lists is present."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        present = set(os.listdir(image_dir))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("info") != info:
        return False
    images = data.get("images", [])
    return len(images) == info["num_images"] and all(im.get("file_name") in present for im in images)


@contextlib.contextmanager
def _exclusive_lock(path):
    """Inter-process lock on ``path`` (POSIX ``flock``; a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_split(domain, out_dir, split, info):
    """Draw every image of a split into ``out_dir/<split>/`` and write ``out_dir/<split>.json``."""
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir)
    images, annotations = [], []
    for index in range(info["num_images"]):
        rng = np.random.default_rng(_image_seed_sequence(info["seed"], split, index))
        image, instances = domain.render(rng, info["image_size"], info["min_objects"], info["max_objects"])
        file_name = f"{index:06d}.jpg"
        Image.fromarray(image).save(
            os.path.join(image_dir, file_name), format="JPEG", quality=_JPEG_QUALITY, subsampling=0
        )
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for inst in instances:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": inst["category_id"],
                "bbox": inst["bbox"],
                "area": inst["area"],
                "iscrowd": 0,
            })
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": domain.supercategory}
                       for i, n in enumerate(domain.classes)],
    }
    json_path = os.path.join(out_dir, f"{split}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    return image_dir, json_path


def generate_split(domain, root, split, num_images, image_size=GENERATED_SET_DEFAULTS["image_size"], seed=GENERATED_SET_DEFAULTS["seed"], min_objects=None,
                   max_objects=None):
    """Write one split of ``domain`` (a :class:`SyntheticDomain`) or reuse it; return its COCO JSON path.

    Writes ``root/<split>/000000.jpg ...`` (JPEG, quality 95, 4:4:4 chroma) and ``root/<split>.json``
    (COCO: category ids 1..K in ``domain.classes`` order, image and annotation ids from 1, the
    generation settings in ``info``). Image ``i`` is drawn from its own generator derived from
    ``(seed, split, i)``: the same arguments give byte-identical files, and different splits never
    share images. ``min_objects`` / ``max_objects`` default to ``domain.default_objects``.

    Caching and atomicity: if ``root/<split>.json`` already exists with the same settings (domain
    and its version included) and all its images are present, nothing is written. Otherwise the
    split is generated in a temporary folder inside ``root`` and moved into place with renames,
    the JSON last, so an interrupted run never leaves a split that looks complete. A lock file
    ``root/.<split>.lock`` keeps concurrent processes (e.g. several ranks) from generating the
    same split twice.

    Returns:
        str: absolute path of ``root/<split>.json``.
    """
    split = _check_split(split)
    num_images = _check_int("num_images", num_images, 1)
    image_size = _check_int("image_size", image_size, 32, _MAX_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    min_objects = domain.default_objects[0] if min_objects is None else min_objects
    max_objects = domain.default_objects[1] if max_objects is None else max_objects
    min_objects, max_objects = _check_object_counts(min_objects, max_objects, domain.objects_limit)
    if root is None:
        raise ValueError("root must be a directory path, got None")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))

    info = _split_info(domain, split, num_images, image_size, seed, min_objects, max_objects)
    json_path = os.path.join(root, f"{split}.json")
    image_dir = os.path.join(root, split)
    if _split_is_complete(json_path, image_dir, info):
        return json_path

    os.makedirs(root, exist_ok=True)
    with _exclusive_lock(os.path.join(root, f".{split}.lock")):
        if _split_is_complete(json_path, image_dir, info):  # another process finished it meanwhile
            return json_path
        tmp_prefix = f".{split}.tmp-"
        for entry in os.listdir(root):  # leftovers of interrupted runs (we hold the lock)
            if entry.startswith(tmp_prefix):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        tmp_dir = tempfile.mkdtemp(prefix=tmp_prefix, dir=root)
        try:
            new_images, new_json = _write_split(domain, tmp_dir, split, info)
            # The JSON marks a split complete: remove a stale one first and move the new one last.
            if os.path.lexists(json_path):
                os.remove(json_path)
            if os.path.lexists(image_dir):
                os.replace(image_dir, os.path.join(tmp_dir, "stale"))
            os.replace(new_images, image_dir)
            os.replace(new_json, json_path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_path


def default_cache_root(cache_name="synthetic"):
    """``$JOINDET_CACHE/<cache_name>`` if ``JOINDET_CACHE`` is set (non-empty), else
    ``~/.cache/joindet/<cache_name>``."""
    cache = os.environ.get("JOINDET_CACHE")
    base = os.path.expanduser(cache) if cache else os.path.join(os.path.expanduser("~"), ".cache", "joindet")
    return os.path.join(base, cache_name)


def split_dir_name(num_images, image_size, seed, domain):
    """Cache folder name of a split with these settings: ``domain.dir_prefix`` +
    ``n<num>_s<size>_seed<seed>``, e.g. ``n400_s256_seed0`` for the shapes."""
    num_images = _check_int("num_images", num_images, 1)
    image_size = _check_int("image_size", image_size, 32, _MAX_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    return f"{domain.dir_prefix}n{num_images}_s{image_size}_seed{seed}"


# --------------------------------------------------------------------------- Detectron2 registration
def _load_labeled(domain, root, split, num_images, image_size, seed, dataset_name):
    from detectron2.data.datasets import load_coco_json

    json_file = generate_split(domain, root, split, num_images, image_size, seed)
    return load_coco_json(json_file, os.path.join(root, split), dataset_name)


def _load_unlabeled(domain, root, split, num_images, image_size, seed):
    json_file = generate_split(domain, root, split, num_images, image_size, seed)
    with open(json_file, encoding="utf-8") as f:
        images = json.load(f)["images"]
    image_root = os.path.join(root, split)
    return [
        {
            "file_name": os.path.join(image_root, im["file_name"]),
            "height": im["height"],
            "width": im["width"],
            "image_id": im["id"],
        }
        for im in sorted(images, key=lambda im: im["id"])
    ]


def register_domain(domain, name_prefix, root=None, num_train=GENERATED_SET_DEFAULTS["num_train"], num_val=GENERATED_SET_DEFAULTS["num_val"],
                    image_size=GENERATED_SET_DEFAULTS["image_size"], seed=GENERATED_SET_DEFAULTS["seed"]):
    """Register a generated domain (a :class:`SyntheticDomain`) in Detectron2's ``DatasetCatalog``
    and ``MetadataCatalog``.

    Names: ``<prefix>_train`` and ``<prefix>_val`` (loaded with ``load_coco_json``: XYWH_ABS boxes,
    category ids mapped to 0..K-1) and ``<prefix>_train_unlabeled`` (the train images as dicts with
    file_name/height/width/image_id only). Splits are generated on first load (with the domain's
    default object counts), under ``root/<split_dir_name(n, image_size, seed, domain)>/``
    (``root`` defaults to ``default_cache_root(domain.cache_name)``). Train and val come from
    different random streams.

    Metadata of train/val: thing_classes, thing_dataset_id_to_contiguous_id, json_file,
    image_root, evaluator_type="coco"; of the unlabeled view: thing_classes, image_root,
    labeled_dataset (the train name). Every entry also records ``synthetic_settings`` (the domain's
    name and version among them): registering a name again with the same settings does nothing,
    with different settings it replaces the old entry in both catalogs.

    Returns:
        tuple[str, str, str]: the train, val and unlabeled dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if not isinstance(name_prefix, str) or not name_prefix:
        raise ValueError(f"name_prefix must be a non-empty string, got {name_prefix!r}")
    num_train = _check_int("num_train", num_train, 1)
    num_val = _check_int("num_val", num_val, 1)
    image_size = _check_int("image_size", image_size, 32, _MAX_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    root = default_cache_root(domain.cache_name) if root is None else root
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))

    settings = {
        "domain": domain.name, "root": root, "num_train": num_train, "num_val": num_val,
        "image_size": image_size, "seed": seed, "generator_version": domain.version,
    }
    train_root = os.path.join(root, split_dir_name(num_train, image_size, seed, domain))
    val_root = os.path.join(root, split_dir_name(num_val, image_size, seed, domain))
    train_name, val_name = f"{name_prefix}_train", f"{name_prefix}_val"
    unlabeled_name = f"{name_prefix}_train_unlabeled"
    classes = list(domain.classes)
    id_map = {i + 1: i for i in range(len(classes))}

    entries = {
        train_name: (
            functools.partial(_load_labeled, domain, train_root, "train", num_train, image_size, seed, train_name),
            {"json_file": os.path.join(train_root, "train.json"), "image_root": os.path.join(train_root, "train"),
             "evaluator_type": "coco", "thing_dataset_id_to_contiguous_id": id_map},
        ),
        val_name: (
            functools.partial(_load_labeled, domain, val_root, "val", num_val, image_size, seed, val_name),
            {"json_file": os.path.join(val_root, "val.json"), "image_root": os.path.join(val_root, "val"),
             "evaluator_type": "coco", "thing_dataset_id_to_contiguous_id": id_map},
        ),
        unlabeled_name: (
            functools.partial(_load_unlabeled, domain, train_root, "train", num_train, image_size, seed),
            {"image_root": os.path.join(train_root, "train"), "labeled_dataset": train_name},
        ),
    }
    for name, (loader, metadata) in entries.items():
        if name in DatasetCatalog.list():
            if name in MetadataCatalog.list() and MetadataCatalog.get(name).get("synthetic_settings") == settings:
                continue
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(thing_classes=classes, synthetic_settings=settings, **metadata)
    return train_name, val_name, unlabeled_name
