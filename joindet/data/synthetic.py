"""A built-in synthetic detection dataset: coloured, textured shapes on varied backgrounds.

It lets a user with no dataset and no GPU train and evaluate a small Deformable DETR, and it is
the set on which self-generated object priors are measured. Everything is drawn with numpy and
OpenCV without anti-aliasing, from a seeded ``numpy.random.Generator``, so the same arguments
give byte-identical files.

What an image holds (``render_synthetic_image``):

* a background: a linear colour gradient in a random direction, low-contrast smooth noise, and
  either soft stripes, soft blotches or nothing more;
* 1..``max_objects`` shapes of the classes in ``SHAPE_CLASSES``, each with a random size (its
  longer side before rotation is 8% to 45% of the image side), aspect ratio, rotation, colour
  (at least ``_MIN_BACKGROUND_DISTANCE`` in RGB from the mean background colour under it, and at
  least ``_MIN_OBJECT_DISTANCE`` from the objects it overlaps) and texture (solid, stripes,
  checker or smooth noise); each shape lies wholly inside the image;
* light pixel noise over everything.

Occlusion rule: later objects are drawn on top. A new object is placed only if every earlier
object keeps at least ``MIN_VISIBLE_FRACTION`` (50%) of its pixels visible; otherwise a new
shape, size and position are drawn (sizes shrink as the tries go on), and after
``_PLACEMENT_TRIES`` failures the object is not placed at all. So every annotated object ends at
least 50% visible, and nothing unannotated is drawn. An object's box is the extent of its final
visible pixels, and its ``area`` is the number of those pixels (as COCO's segment area).

On disk (``generate_synthetic_split``): ``root/<split>/NNNNNN.jpg`` (JPEG, quality 95, 4:4:4
chroma) and ``root/<split>.json`` in COCO format (category ids 1..K in ``SHAPE_CLASSES`` order,
image and annotation ids from 1, integer XYWH boxes, the generation settings in ``info``).

Shared machinery. Every built-in generated domain (these shapes; the small objects in clutter of
``joindet.data.clutter``) is a :class:`SyntheticDomain`: its class names, its version and its
``render(rng, image_size, min_objects, max_objects)`` function. One implementation, here, turns a
domain into files and datasets: the per-image seed streams, the COCO JSON, the cache check, the
temporary-folder + rename write under an inter-process lock (``generate_split``), the cache folders
(``default_cache_root``, ``synthetic_dir_name``) and the Detectron2 registration (``register_domain``).
``generate_synthetic_split`` and ``register_synthetic`` are that machinery applied to ``SHAPES``.
"""
import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import shutil
import tempfile
import zlib
from typing import Callable, Tuple

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "GENERATED_SET_DEFAULTS",
    "SHAPE_CLASSES",
    "MIN_VISIBLE_FRACTION",
    "SyntheticDomain",
    "SHAPES",
    "render_synthetic_image",
    "generate_split",
    "generate_synthetic_split",
    "default_cache_root",
    "default_synthetic_root",
    "synthetic_dir_name",
    "register_domain",
    "register_synthetic",
]

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle", "star", "cross", "ring")
# The default settings of a generated set, of every domain (shapes, clutter): the one place they are
# written. register_domain (so register_synthetic and register_clutter), generate_split, DATASETS.SYNTHETIC /
# DATASETS.CLUTTER of joindet/config.py, dataloader.synthetic of the LazyConfigs and the bank tools'
# --synthetic-* options all take them from here.
GENERATED_SET_DEFAULTS = {"num_train": 400, "num_val": 100, "image_size": 256, "seed": 0}
_D = GENERATED_SET_DEFAULTS

MIN_VISIBLE_FRACTION = 0.5  # an annotated object keeps at least this fraction of its pixels

# Bumped whenever the drawing changes, so cached splits from older code are regenerated.
_GENERATOR_VERSION = 1
_SIZE_RANGE = (0.08, 0.45)  # object's longer side before rotation, as a fraction of the image side
_MIN_SIDE_PX = {"rectangle": 6, "ellipse": 6, "triangle": 8, "star": 10, "cross": 8, "ring": 10}
_ASPECT_RANGE = {  # shorter side / longer side, before rotation
    "rectangle": (0.4, 1.0),
    "ellipse": (0.45, 1.0),
    "triangle": (0.6, 1.0),
    "star": (0.8, 1.0),
    "cross": (0.75, 1.0),
    "ring": (0.6, 1.0),
}
_MIN_OBJECT_PIXELS = 12
_PLACEMENT_TRIES = 40
_COLOUR_CANDIDATES = 64
_MIN_BACKGROUND_DISTANCE = 90.0  # RGB distance from the mean background colour under the object
_MIN_OBJECT_DISTANCE = 60.0  # RGB distance from the colour of every object it overlaps
_TEXTURES = ("solid", "stripes", "checker", "noise")
_JPEG_QUALITY = 95
_MAX_IMAGE_SIZE = 4096
_MAX_OBJECTS = 20


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


# --------------------------------------------------------------------------- drawing
def _background(rng, size):
    """Background image, float32 (size, size, 3), RGB in about [0, 255]."""
    coords = np.arange(size, dtype=np.float32) / max(size - 1, 1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")

    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    c0 = rng.uniform(40.0, 215.0, 3)
    c1 = np.clip(c0 + rng.uniform(-70.0, 70.0, 3), 0.0, 255.0)
    image = c0 + ramp[..., None] * (c1 - c0)

    # Low-contrast smooth noise: a coarse random grid, upsampled.
    cells = int(rng.integers(4, 9))
    grid = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
    image += rng.uniform(3.0, 8.0) * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)

    style = int(rng.integers(3))
    if style == 0:  # soft stripes
        phi = rng.uniform(0.0, math.pi)
        period = rng.uniform(0.08, 0.3) * size
        wave = np.sin(2.0 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) * (size - 1) / period)
        image += rng.uniform(5.0, 14.0) * wave[..., None] * rng.uniform(-1.0, 1.0, 3)
    elif style == 1:  # soft blotches
        layer = np.zeros((size, size, 3), np.float32)
        for _ in range(int(rng.integers(2, 6))):
            blob = np.zeros((size, size), np.uint8)
            centre = (int(rng.integers(size)), int(rng.integers(size)))
            axes = (max(1, int(rng.uniform(0.1, 0.3) * size)), max(1, int(rng.uniform(0.1, 0.3) * size)))
            cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8)
            layer += blob[..., None].astype(np.float32) * rng.uniform(-25.0, 25.0, 3).astype(np.float32)
        image += cv2.GaussianBlur(layer, (0, 0), sigmaX=max(1.0, 0.06 * size))
    return image.astype(np.float32)


def _unit_outline(rng, name):
    """Outline polygons of a shape in unit coordinates (longer side 1, centred at 0).

    Returns (outer, hole): float64 (P, 2) arrays of (x, y) points; ``hole`` is None except for rings.
    """
    if name == "rectangle":
        return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]), None
    if name in ("ellipse", "ring"):
        t = np.linspace(0.0, 2.0 * math.pi, 96, endpoint=False)
        circle = 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
        return circle, (circle * rng.uniform(0.5, 0.65) if name == "ring" else None)
    if name == "triangle":
        jitter = np.deg2rad(rng.uniform(-15.0, 15.0, 2))
        angles = np.array([-0.5 * math.pi, math.pi / 6 + jitter[0], 5 * math.pi / 6 + jitter[1]])
        return 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1), None
    if name == "star":
        points = int(rng.integers(5, 7))
        angles = -0.5 * math.pi + np.arange(2 * points) * math.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, 0.5, 0.5 * rng.uniform(0.4, 0.5))
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), None
    if name == "cross":
        h = 0.5 * rng.uniform(0.3, 0.4)  # half the arm thickness
        return np.array([
            [-h, -0.5], [h, -0.5], [h, -h], [0.5, -h], [0.5, h], [h, h],
            [h, 0.5], [-h, 0.5], [-h, h], [-0.5, h], [-0.5, -h], [-h, -h],
        ]), None
    raise ValueError(f"unknown shape class {name!r}")


def _shape_mask(rng, name, size, max_fraction):
    """Rasterise one randomly sized, stretched, rotated and placed shape.

    Returns (mask bool (size, size), centre (x, y), rotation in radians). The shape lies wholly
    inside the image.
    """
    low = max(_SIZE_RANGE[0] * size, _MIN_SIDE_PX[name])
    high = max(low, max_fraction * size)
    side = rng.uniform(low, high)
    aspect = rng.uniform(*_ASPECT_RANGE[name])
    rotation = rng.uniform(0.0, 2.0 * math.pi)
    outer, hole = _unit_outline(rng, name)

    rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
    transform = rot @ np.diag([side, side * aspect])
    outer = outer @ transform.T
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    # Fit inside [0.5, size - 1.5]: shrink if the rotated shape is too large, then place it.
    room = size - 2.0
    scale = min(1.0, room / max(float((hi - lo).max()), 1e-6))
    outer, lo, hi = outer * scale, lo * scale, hi * scale
    centre = np.array([rng.uniform(0.5 - lo[0], size - 1.5 - hi[0]), rng.uniform(0.5 - lo[1], size - 1.5 - hi[1])])

    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2.fillPoly; drawing stays aliased (LINE_8)
    cv2.fillPoly(mask, [np.round((outer + centre) * (1 << shift)).astype(np.int32)], 1, cv2.LINE_8, shift)
    if hole is not None:
        hole = (hole @ transform.T) * scale
        cv2.fillPoly(mask, [np.round((hole + centre) * (1 << shift)).astype(np.int32)], 0, cv2.LINE_8, shift)
    return mask.astype(bool), centre, rotation


def _texture(rng, kind, height, width, centre_offset, angle, scale):
    """Texture pattern in [-1, 1], float32 (height, width), for a box whose object centre is at
    ``centre_offset`` (x, y) relative to the box's top-left pixel."""
    if kind == "solid":
        return np.zeros((height, width), np.float32)
    if kind == "noise":
        cells = int(rng.integers(3, 7))
        grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
        return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs - centre_offset[0], ys - centre_offset[1]
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    period = max(4.0, rng.uniform(0.15, 0.3) * scale)
    if kind == "stripes":
        return np.where(np.sin(2.0 * math.pi * u / period) >= 0, 1.0, -1.0).astype(np.float32)
    if kind == "checker":
        cell = np.floor(u / (0.5 * period)) + np.floor(v / (0.5 * period))
        return np.where(cell % 2 == 0, 1.0, -1.0).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _pick_colour(rng, background_mean, neighbour_colours, amplitude,
                 min_background_distance=_MIN_BACKGROUND_DISTANCE, min_object_distance=_MIN_OBJECT_DISTANCE):
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


def render_synthetic_image(rng, image_size, min_objects=1, max_objects=5):
    """Draw one synthetic image and its objects.

    Args:
        rng (numpy.random.Generator): the only source of randomness.
        image_size (int): side S of the square image, >= 32.
        min_objects, max_objects (int): the number of objects is drawn uniformly from this range;
            an object that cannot be placed under the occlusion rule (module docstring) is left
            out, which with the default sizes practically never happens.

    Returns:
        image: uint8 (S, S, 3), RGB.
        instances: list of dicts, one per annotated object, drawing order, with
            ``category_id`` (int, 1..len(SHAPE_CLASSES)), ``bbox`` ([x, y, w, h] ints: the extent
            of the visible pixels, inside the image), ``area`` (int, visible pixel count),
            ``full_area`` (int, pixel count before later objects covered it; ``area >=
            MIN_VISIBLE_FRACTION * full_area``) and ``mask`` (bool (S, S), the visible pixels).
    """
    size = _check_int("image_size", image_size, 32, _MAX_IMAGE_SIZE)
    min_objects, max_objects = _check_object_counts(min_objects, max_objects)

    background = _background(rng, size)
    image = background.copy()
    objects = []  # dicts: class_index, full_area, visible (bool mask), colour
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        class_index = int(rng.integers(len(SHAPE_CLASSES)))
        name = SHAPE_CLASSES[class_index]
        placed = None
        for attempt in range(_PLACEMENT_TRIES):
            # Later tries draw smaller shapes so that crowded images still fit their objects.
            max_fraction = _SIZE_RANGE[0] + (_SIZE_RANGE[1] - _SIZE_RANGE[0]) * max(0.0, 1.0 - attempt / 20.0)
            mask, centre, rotation = _shape_mask(rng, name, size, max_fraction)
            full_area = int(np.count_nonzero(mask))
            if full_area < _MIN_OBJECT_PIXELS:
                continue
            if all(
                np.count_nonzero(o["visible"] & ~mask) >= MIN_VISIBLE_FRACTION * o["full_area"] for o in objects
            ):
                placed = (mask, centre, rotation, full_area)
                break
        if placed is None:
            continue
        mask, centre, rotation, full_area = placed

        texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
        amplitude = 0.0 if texture == "solid" else float(rng.uniform(20.0, 35.0))
        neighbours = [o["colour"] for o in objects if np.any(o["visible"] & mask)]
        colour = _pick_colour(rng, background[mask].mean(axis=0), neighbours, amplitude)

        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        pattern = _texture(
            rng, texture, y1 - y0, x1 - x0, (centre[0] - x0, centre[1] - y0),
            rotation + rng.uniform(0.0, math.pi), float(max(y1 - y0, x1 - x0)),
        )
        box_mask = mask[y0:y1, x0:x1]
        pixels = colour[None, :] + amplitude * pattern[box_mask][:, None]
        image[y0:y1, x0:x1][box_mask] = np.clip(pixels, 0.0, 255.0)

        for o in objects:
            o["visible"] &= ~mask
        objects.append({"class_index": class_index, "full_area": full_area, "visible": mask, "colour": colour})

    image += rng.normal(0.0, rng.uniform(1.0, 3.5), image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    instances = []
    for o in objects:
        ys, xs = np.nonzero(o["visible"])
        x0, y0 = int(xs.min()), int(ys.min())
        instances.append({
            "category_id": o["class_index"] + 1,
            "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
            "area": int(xs.size),
            "full_area": o["full_area"],
            "mask": o["visible"],
        })
    return image, instances


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
        dir_prefix: prefix of the per-settings folder (``synthetic_dir_name``), so that the domains'
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


SHAPES = SyntheticDomain(
    name="shapes",
    description="JoinDet synthetic shapes",
    classes=SHAPE_CLASSES,
    supercategory="shape",
    version=_GENERATOR_VERSION,
    render=render_synthetic_image,
    default_objects=(1, 5),
    objects_limit=_MAX_OBJECTS,
    cache_name="synthetic",
    dir_prefix="",
)


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


def generate_split(domain, root, split, num_images, image_size=_D["image_size"], seed=_D["seed"], min_objects=None,
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


def generate_synthetic_split(root, split, num_images, image_size=_D["image_size"], seed=_D["seed"], min_objects=1,
                             max_objects=5):
    """Write one split of the synthetic shapes dataset (or reuse it) and return its COCO JSON path:
    ``generate_split(SHAPES, ...)`` (see there and the module docstring)."""
    return generate_split(SHAPES, root, split, num_images, image_size, seed, min_objects, max_objects)


def default_cache_root(cache_name="synthetic"):
    """``$JOINDET_CACHE/<cache_name>`` if ``JOINDET_CACHE`` is set (non-empty), else
    ``~/.cache/joindet/<cache_name>``."""
    cache = os.environ.get("JOINDET_CACHE")
    base = os.path.expanduser(cache) if cache else os.path.join(os.path.expanduser("~"), ".cache", "joindet")
    return os.path.join(base, cache_name)


def default_synthetic_root():
    """``$JOINDET_CACHE/synthetic`` if ``JOINDET_CACHE`` is set (non-empty), else
    ``~/.cache/joindet/synthetic``."""
    return default_cache_root(SHAPES.cache_name)


def synthetic_dir_name(num_images, image_size, seed, domain=SHAPES):
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


def register_domain(domain, name_prefix, root=None, num_train=_D["num_train"], num_val=_D["num_val"],
                    image_size=_D["image_size"], seed=_D["seed"]):
    """Register a generated domain (a :class:`SyntheticDomain`) in Detectron2's ``DatasetCatalog``
    and ``MetadataCatalog``.

    Names: ``<prefix>_train`` and ``<prefix>_val`` (loaded with ``load_coco_json``: XYWH_ABS boxes,
    category ids mapped to 0..K-1) and ``<prefix>_train_unlabeled`` (the train images as dicts with
    file_name/height/width/image_id only). Splits are generated on first load (with the domain's
    default object counts), under ``root/<synthetic_dir_name(n, image_size, seed, domain)>/``
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
    train_root = os.path.join(root, synthetic_dir_name(num_train, image_size, seed, domain))
    val_root = os.path.join(root, synthetic_dir_name(num_val, image_size, seed, domain))
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


def register_synthetic(name_prefix="synth", root=None, **settings):
    """Register the synthetic shapes dataset: ``register_domain(SHAPES, ...)`` (see there), i.e.
    ``<prefix>_train``, ``<prefix>_val`` and ``<prefix>_train_unlabeled`` under
    ``root/<synthetic_dir_name(n, image_size, seed)>/`` (``root`` defaults to ``default_synthetic_root()``).

    Returns:
        tuple[str, str, str]: the train, val and unlabeled dataset names.
    """
    return register_domain(SHAPES, name_prefix, root, **settings)
