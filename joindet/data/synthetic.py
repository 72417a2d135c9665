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

The generated-domain machinery (seed streams, COCO files, cache, lock, registration) is in
:mod:`joindet.data.generated`, shared with the clutter domain (:mod:`joindet.data.clutter`);
``generate_synthetic_split`` and ``register_synthetic`` are that machinery applied to ``SHAPES``.
"""
import math

import cv2
import numpy as np

from .generated import (  # noqa: F401  (re-exported: the shared machinery, see joindet.data.generated)
    _MAX_IMAGE_SIZE,
    _MAX_OBJECTS,
    GENERATED_SET_DEFAULTS,
    MIN_VISIBLE_FRACTION,
    SyntheticDomain,
    _check_int,
    _check_object_counts,
    _image_seed_sequence,
    _pick_colour,
    default_cache_root,
    generate_split,
    register_domain,
    split_dir_name,
)

_D = GENERATED_SET_DEFAULTS

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
_MIN_BACKGROUND_DISTANCE = 90.0  # RGB distance from the mean background colour under the object
_MIN_OBJECT_DISTANCE = 60.0  # RGB distance from the colour of every object it overlaps
_TEXTURES = ("solid", "stripes", "checker", "noise")


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
        colour = _pick_colour(rng, background[mask].mean(axis=0), neighbours, amplitude, _MIN_BACKGROUND_DISTANCE,
                              _MIN_OBJECT_DISTANCE)

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



# --------------------------------------------------------------------------- the domain
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


# --------------------------------------------------------------------------- files and registration (joindet.data.generated)
def generate_synthetic_split(root, split, num_images, image_size=_D["image_size"], seed=_D["seed"], min_objects=1,
                             max_objects=5):
    """Write one split of the synthetic shapes dataset (or reuse it) and return its COCO JSON path:
    ``generate_split(SHAPES, ...)`` (see there and the module docstring)."""
    return generate_split(SHAPES, root, split, num_images, image_size, seed, min_objects, max_objects)



def default_synthetic_root():
    """``$JOINDET_CACHE/synthetic`` if ``JOINDET_CACHE`` is set (non-empty), else
    ``~/.cache/joindet/synthetic``."""
    return default_cache_root(SHAPES.cache_name)


def synthetic_dir_name(num_images, image_size, seed, domain=SHAPES):
    """Cache folder name of a split with these settings: ``split_dir_name`` (``domain.dir_prefix`` +
    ``n<num>_s<size>_seed<seed>``), e.g. ``n400_s256_seed0`` for the shapes."""
    return split_dir_name(num_images, image_size, seed, domain)


def register_synthetic(name_prefix="synth", root=None, **settings):
    """Register the synthetic shapes dataset: ``register_domain(SHAPES, ...)`` (see there), i.e.
    ``<prefix>_train``, ``<prefix>_val`` and ``<prefix>_train_unlabeled`` under
    ``root/<synthetic_dir_name(n, image_size, seed)>/`` (``root`` defaults to ``default_synthetic_root()``).

    Returns:
        tuple[str, str, str]: the train, val and unlabeled dataset names.
    """
    return register_domain(SHAPES, name_prefix, root, **settings)
