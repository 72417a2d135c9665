"""A second built-in detection domain: many small objects in clutter over natural-looking textures.

The shapes set (``joindet.data.synthetic``) has 1-5 large, high-contrast, hard-edged shapes on smooth
gradients. This domain differs on every axis that matters to object priors, so that no result rests
on one generator: many small objects, lower contrast, textured (not smooth) backgrounds and
unannotated clutter. It is drawn with numpy and OpenCV from a seeded ``numpy.random.Generator``
(the same arguments give byte-identical files) and goes through the same files-on-disk and
registration code as the shapes (``joindet.data.generated.generate_split`` / ``register_domain``,
with the :data:`CLUTTER` domain).

Parameters (given below at the reference size of 256 px; lengths scale with the image side). They
were set once, from what looks natural and is hard but fair for a detector, before any method was
run on this domain, and are not to be tuned against any method's results; a change to the drawing
bumps ``_CLUTTER_VERSION``.

What an image holds (``render_clutter_image``), bottom to top:

* **Background** (``_background``): a multi-octave value-noise field (5 octaves, 2-4 cells at the
  coarsest, persistence 0.45-0.6: the 1/f-like spectrum of natural surfaces) mapped through a
  3-colour palette of related hues (one random hue, the others within +-0.08 of it, saturation
  0.1-0.5, value 0.3-0.85: earthy, moss, sand, slate or marble-like), plus one of: nothing, wood
  grain (stripes of period 6-20 px warped by a second noise field), soft stripes (period 12-48 px),
  or mottling (a finer noise field, +-10-25 per channel); a fine grain (value noise of ~3 px cells,
  +-4-10); and 2-6 soft blotches (blurred, so without an edge: shading, not things).
* **Clutter under the objects**, not annotated: 20-80 specks (radius 1-2 px, at most 5 px across,
  below the smallest object) and 3-10 twigs (random-walk polylines of 3-6 segments of 10-40 px, 1-2
  px thick), darker or lighter than the ground under them by 35-90 grey levels. What makes them
  clutter is their shape: thin or tiny, never a closed compact blob of object size.
* **Objects**, annotated: 5..25 per image (``min_objects``..``max_objects``), of the classes in
  ``CLUTTER_CLASSES``, each class with its own shape and its own texture:

  ========  ==========================================  =========================================
  class     shape (aspect = shorter / longer side)      texture
  ========  ==========================================  =========================================
  bead      ellipse, aspect 0.7-1                       3-D shading: dark rim, lit highlight
  ring      annulus, hole 45-65% of the diameter        flat colour
  star      5-6 points, inner radius 38-50%             radial gradient (centre to tips)
  tile      regular 4-7-gon, aspect 0.8-1               checker, 2.5-4 cells across
  pebble    blob with a noisy outline, aspect 0.55-1    its own value noise (mottled)
  capsule   stadium (rounded bar), aspect 0.25-0.45     3-6 bands across the long axis
  ========  ==========================================  =========================================

  The longer side is log-uniform in 8..40 px (small objects are the more frequent, as in natural
  scenes; all are COCO "small" or "medium"), with a floor per class for small images (6-9 px);
  rotation uniform; every object lies wholly inside the image. The colour is random, with every
  texture extreme at least 60 RGB from the mean of the ground under the object and at least 45 from
  the objects it overlaps (the shapes set asks for 90 / 60: here some objects are camouflaged, none
  invisible).
* **Clutter over the objects**, not annotated: 0-4 grass blades (thin 1 px curves, 20-80 px long)
  drawn over everything, so they may cut through objects.
* **Camera**: an illumination ramp (x0.8-1.2 across the image, random direction) over everything, a
  Gaussian blur of sigma 0.6 px and pixel noise of sigma 2-5.

Occlusion rule (the same as the shapes set's, on purpose): later objects and grass blades cover
earlier objects; one is drawn only if every earlier object keeps at least ``MIN_VISIBLE_FRACTION``
(50%) of its pixels visible, else a new one is tried (``_PLACEMENT_TRIES`` tries per object, then
it is left out; a blade is simply skipped). An object's box is the extent of its final *visible*
pixels and its ``area`` is the number of those pixels, as in the shapes set. Clutter is never
annotated and never counted as an object's pixels.

On disk (``generate_clutter_split``): the same layout as the shapes set -- ``root/<split>/NNNNNN.jpg``
and ``root/<split>.json`` in COCO format (category ids 1..6 in ``CLUTTER_CLASSES`` order, integer
XYWH boxes, the settings in ``info``); registered as ``clutter_train``, ``clutter_val`` and
``clutter_train_unlabeled`` (``register_clutter``) under ``$JOINDET_CACHE/clutter`` (or
``~/.cache/joindet/clutter``) in folders named ``clutter_n<N>_s<size>_seed<seed>``.
"""
import colorsys
import math

import cv2
import numpy as np
from scipy import ndimage

from .generated import GENERATED_SET_DEFAULTS as _D
from .generated import (
    _MAX_IMAGE_SIZE,
    MIN_VISIBLE_FRACTION,
    SyntheticDomain,
    _check_int,
    _check_object_counts,
    _pick_colour,
    default_cache_root,
    generate_split,
    register_domain,
)

__all__ = [
    "CLUTTER_CLASSES",
    "CLUTTER",
    "render_clutter_image",
    "generate_clutter_split",
    "default_clutter_root",
    "register_clutter",
]

CLUTTER_CLASSES = ("bead", "ring", "star", "tile", "pebble", "capsule")

# Bumped whenever the drawing changes, so cached splits from older code are regenerated.
_CLUTTER_VERSION = 1
_OBJECTS_LIMIT = 40
_DEFAULT_OBJECTS = (5, 25)
_REFERENCE_SIZE = 256.0  # the lengths below are in pixels at this image side
_SIZE_RANGE_PX = (8.0, 40.0)  # object's longer side before rotation, log-uniform
_MIN_SIDE_PX = {"bead": 6, "ring": 9, "star": 9, "tile": 7, "pebble": 7, "capsule": 8}  # floor, any image size
_ASPECT_RANGE = {  # shorter side / longer side
    "bead": (0.7, 1.0),
    "ring": (0.75, 1.0),
    "star": (0.85, 1.0),
    "tile": (0.8, 1.0),
    "pebble": (0.55, 1.0),
    "capsule": (0.25, 0.45),
}
_MIN_OBJECT_PIXELS = 12
_PLACEMENT_TRIES = 30
_MIN_BACKGROUND_DISTANCE = 60.0  # RGB distance of every texture extreme from the mean ground under the object
_MIN_OBJECT_DISTANCE = 45.0  # RGB distance from the colour of every object it overlaps
_TEXTURE_AMPLITUDE = {  # half the spread of the class texture (grey levels); 0 = flat colour
    "bead": (25.0, 45.0),
    "ring": (0.0, 0.0),
    "star": (15.0, 30.0),
    "tile": (20.0, 35.0),
    "pebble": (20.0, 35.0),
    "capsule": (20.0, 35.0),
}
_SPECKS = (20, 80)  # per image at 256 px (scaled with the image area)
_TWIGS = (3, 10)  # per image at 256 px (scaled with the image side)
_BLADES = (0, 4)  # grass blades over the objects, per image at 256 px (scaled with the side)
_BLUR_SIGMA = 0.6
_NOISE_SIGMA = (2.0, 5.0)


# --------------------------------------------------------------------------- background
def _value_noise(rng, size, base_cells, octaves, persistence):
    """Multi-octave value noise, float32 (size, size), normalised to [0, 1]."""
    field = np.zeros((size, size), np.float32)
    amplitude, total = 1.0, 0.0
    for octave in range(octaves):
        cells = min(base_cells * 2 ** octave, size) + 1
        grid = rng.random((cells, cells), dtype=np.float32)
        field += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amplitude
        amplitude *= persistence
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _palette(rng):
    """Three related RGB colours (float32 (3, 3), 0..255): one hue, neighbours within +-0.08."""
    hue = rng.random()
    sat, val = rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.85)
    colours = []
    for _ in range(3):
        h = (hue + rng.uniform(-0.08, 0.08)) % 1.0
        s = float(np.clip(sat * rng.uniform(0.6, 1.4), 0.0, 1.0))
        v = float(np.clip(val + rng.uniform(-0.25, 0.25), 0.08, 1.0))
        colours.append(colorsys.hsv_to_rgb(h, s, v))
    return np.asarray(colours, np.float32) * 255.0


def _background(rng, size, scale):
    """The textured ground, float32 (size, size, 3), RGB in about [0, 255]."""
    t = _value_noise(rng, size, int(rng.integers(2, 5)), 5, rng.uniform(0.45, 0.6))[..., None]
    c = _palette(rng)
    image = np.where(t < 0.5, c[0] + (c[1] - c[0]) * (2.0 * t), c[1] + (c[2] - c[1]) * (2.0 * t - 1.0))

    coords = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    style = int(rng.integers(4))  # 0 nothing more, 1 wood grain, 2 soft stripes, 3 mottling
    if style in (1, 2):
        phi = rng.uniform(0.0, math.pi)
        u = xx * math.cos(phi) + yy * math.sin(phi)
        if style == 1:
            warp = _value_noise(rng, size, int(rng.integers(2, 5)), 2, 0.5)
            period = rng.uniform(6.0, 20.0) * scale
            wave = np.sin(2.0 * math.pi * (u / period + rng.uniform(1.0, 4.0) * warp))
            amplitude = rng.uniform(6.0, 16.0)
        else:
            wave = np.sin(2.0 * math.pi * u / (rng.uniform(12.0, 48.0) * scale))
            amplitude = rng.uniform(5.0, 12.0)
        image += amplitude * wave[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    elif style == 3:
        mottle = _value_noise(rng, size, int(rng.integers(8, 17)), 3, 0.5) * 2.0 - 1.0
        image += mottle[..., None] * rng.uniform(10.0, 25.0, 3).astype(np.float32)

    grain = _value_noise(rng, size, max(4, size // 3), 1, 1.0) * 2.0 - 1.0  # fine grain, ~3 px
    image += rng.uniform(4.0, 10.0) * grain[..., None]

    layer = np.zeros((size, size, 3), np.float32)  # soft blotches: shading without an edge
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.integers(size)), int(rng.integers(size)))
        axes = (max(1, int(rng.uniform(8.0, 30.0) * scale)), max(1, int(rng.uniform(8.0, 30.0) * scale)))
        shade = rng.uniform(-30.0, 30.0, 3).tolist()
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, shade, -1, cv2.LINE_8)
    image += cv2.GaussianBlur(layer, (0, 0), sigmaX=max(1.0, rng.uniform(3.0, 6.0) * scale))
    return np.ascontiguousarray(image, np.float32)


def _clutter_colour(rng, ground):
    """A clutter colour: the ground colour (3,) made 35-90 grey levels darker or lighter, a little tinted."""
    shift = rng.choice((-1.0, 1.0)) * rng.uniform(35.0, 90.0)
    return np.clip(ground + shift + rng.normal(0.0, 12.0, 3), 0.0, 255.0)


def _random_walk(rng, size, segments, length_range, scale):
    """Points (P, 2) int32 of a polyline that wanders from a random start (may leave the image)."""
    point = rng.uniform(0.0, size, 2)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    points = [point.copy()]
    for _ in range(segments):
        heading += rng.normal(0.0, 0.5)
        point = point + rng.uniform(*length_range) * scale * np.array([math.cos(heading), math.sin(heading)])
        points.append(point.copy())
    return np.round(np.asarray(points)).astype(np.int32)


def _draw_clutter_under(rng, image, size, scale):
    """Specks and twigs, drawn into ``image`` in place. Returns their mask, bool (size, size)."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(max(1, int(round(rng.integers(_SPECKS[0], _SPECKS[1] + 1) * scale * scale)))):
        x, y = int(rng.integers(size)), int(rng.integers(size))
        radius = int(rng.integers(1, 3))
        colour = _clutter_colour(rng, image[y, x])
        cv2.circle(image, (x, y), radius, colour.tolist(), -1, cv2.LINE_8)
        cv2.circle(mask, (x, y), radius, 1, -1, cv2.LINE_8)
    for _ in range(max(1, int(round(rng.integers(_TWIGS[0], _TWIGS[1] + 1) * scale)))):
        points = _random_walk(rng, size, int(rng.integers(3, 7)), (10.0, 40.0), scale)
        thickness = int(rng.integers(1, 3)) if scale >= 0.75 else 1
        x, y = np.clip(points[0], 0, size - 1)
        colour = _clutter_colour(rng, image[y, x])
        cv2.polylines(image, [points], False, colour.tolist(), thickness, cv2.LINE_8)
        cv2.polylines(mask, [points], False, 1, thickness, cv2.LINE_8)
    return mask.astype(bool)


# --------------------------------------------------------------------------- objects
def _unit_outline(rng, name, aspect):
    """Outline polygons of a shape in unit coordinates: longer side 1 along x, shorter side ``aspect``
    along y, centred at 0. Returns (outer, hole): float64 (P, 2) (x, y) points; ``hole`` only for rings."""
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    stretch = np.array([0.5, 0.5 * aspect])
    if name == "bead":
        return circle * stretch, None
    if name == "ring":
        return circle * stretch, circle * stretch * rng.uniform(0.45, 0.65)
    if name == "star":
        points = int(rng.integers(5, 7))
        angles = -0.5 * math.pi + np.arange(2 * points) * math.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1) * stretch, None
    if name == "tile":
        sides = int(rng.integers(4, 8))
        angles = rng.uniform(0.0, 2.0 * math.pi / sides) + np.arange(sides) * 2.0 * math.pi / sides
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * stretch, None
    if name == "pebble":
        radius = np.ones_like(t)
        for k in (2, 3, 4):
            radius += rng.uniform(0.0, 0.12) * np.cos(k * t + rng.uniform(0.0, 2.0 * math.pi))
        return circle * (radius / radius.max())[:, None] * stretch, None
    if name == "capsule":
        r = 0.5 * aspect  # a rectangle of length 1 - aspect capped by two half-circles of radius r
        half = np.linspace(-0.5 * math.pi, 0.5 * math.pi, 16)
        right = np.stack([(0.5 - r) + r * np.cos(half), r * np.sin(half)], axis=1)
        left = np.stack([-(0.5 - r) - r * np.cos(half), -r * np.sin(half)], axis=1)
        return np.concatenate([right, left]), None
    raise ValueError(f"unknown clutter class {name!r}")


def _object_mask(rng, name, size, scale):
    """Rasterise one randomly sized, stretched, rotated and placed object, wholly inside the image.

    Returns (mask bool (h, w), (y0, x0) of its crop, centre (x, y) in the image, rotation (radians),
    side (px), aspect).
    """
    low = max(_SIZE_RANGE_PX[0] * scale, _MIN_SIDE_PX[name])
    high = max(low, _SIZE_RANGE_PX[1] * scale)
    side = math.exp(rng.uniform(math.log(low), math.log(high)))  # log-uniform: small objects more often
    side = min(side, size - 2.0)
    aspect = rng.uniform(*_ASPECT_RANGE[name])
    rotation = rng.uniform(0.0, 2.0 * math.pi)
    outer, hole = _unit_outline(rng, name, aspect)
    rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]]) * side
    outer = outer @ rot.T
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    centre = np.array([rng.uniform(0.5 - lo[0], size - 1.5 - hi[0]), rng.uniform(0.5 - lo[1], size - 1.5 - hi[1])])
    x0, y0 = int(math.floor(centre[0] + lo[0])), int(math.floor(centre[1] + lo[1]))
    x1, y1 = int(math.ceil(centre[0] + hi[0])) + 1, int(math.ceil(centre[1] + hi[1])) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    origin = np.array([x0, y0], np.float64)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2.fillPoly
    cv2.fillPoly(mask, [np.round((outer + centre - origin) * (1 << shift)).astype(np.int32)], 1, cv2.LINE_8, shift)
    if hole is not None:
        hole = hole @ rot.T
        cv2.fillPoly(mask, [np.round((hole + centre - origin) * (1 << shift)).astype(np.int32)], 0, cv2.LINE_8, shift)
    return mask.astype(bool), (y0, x0), centre, rotation, side, aspect


def _object_pattern(rng, name, shape, offset, centre, rotation, side, aspect, light):
    """The class texture in [-1, 1], float32 ``shape`` (h, w), for a crop at ``offset`` (y0, x0)."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs + offset[1] - centre[0], ys + offset[0] - centre[1]
    u = (dx * math.cos(rotation) + dy * math.sin(rotation)) / (0.5 * side)  # -1..1 along the long side
    v = (-dx * math.sin(rotation) + dy * math.cos(rotation)) / (0.5 * side * aspect)
    if name == "ring":
        return np.zeros(shape, np.float32)
    if name == "bead":  # a lit sphere: dark rim, bright spot towards the image's light
        r2 = np.clip(u * u + v * v, 0.0, 1.0)
        lx, ly = dx / (0.5 * side) - 0.4 * light[0], dy / (0.5 * side) - 0.4 * light[1]
        spot = np.exp(-(lx * lx + ly * ly) / 0.1)
        return np.clip(-1.0 + 1.6 * np.sqrt(1.0 - r2) + 0.8 * spot, -1.0, 1.0).astype(np.float32)
    if name == "star":  # centre to tips
        return np.clip(1.0 - 2.0 * np.sqrt(u * u + (v * aspect) ** 2), -1.0, 1.0).astype(np.float32)
    if name == "tile":
        cell = 2.0 / rng.uniform(2.5, 4.0)  # in units of u (the long side spans 2)
        checker = np.floor(u / cell) + np.floor(v * aspect / cell)
        return np.where(checker % 2 == 0, 1.0, -1.0).astype(np.float32)
    if name == "pebble":
        noise = np.zeros(shape, np.float32)
        for cells, weight in ((3, 1.0), (6, 0.5)):
            grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
            noise += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.clip(noise / 1.2, -1.0, 1.0)
    if name == "capsule":  # bands across the long axis
        bands = rng.uniform(3.0, 6.0)
        return np.where(np.sin(math.pi * bands * 0.5 * (u + 1.0)) >= 0.0, 1.0, -1.0).astype(np.float32)
    raise ValueError(f"unknown clutter class {name!r}")


def _keeps_visible(visible, full, lost):
    """True when every object keeps at least MIN_VISIBLE_FRACTION of its pixels after losing ``lost``."""
    return bool(np.all(visible - lost >= MIN_VISIBLE_FRACTION * full))


def render_clutter_image(rng, image_size, min_objects=_DEFAULT_OBJECTS[0], max_objects=_DEFAULT_OBJECTS[1],
                         return_clutter=False):
    """Draw one clutter image and its objects (module docstring).

    Args:
        rng (numpy.random.Generator): the only source of randomness.
        image_size (int): side S of the square image, >= 32.
        min_objects, max_objects (int): the number of objects is drawn uniformly from this range
            (<= 40); an object that cannot be placed under the occlusion rule is left out.
        return_clutter (bool): also return the mask of the visible clutter (specks, twigs, blades).

    Returns:
        image: uint8 (S, S, 3), RGB.
        instances: list of dicts, one per annotated object, drawing order, with ``category_id``
            (int, 1..len(CLUTTER_CLASSES)), ``bbox`` ([x, y, w, h] ints: the extent of the visible
            pixels, inside the image), ``area`` (int, visible pixel count), ``full_area`` (int,
            pixel count before anything covered it; ``area >= MIN_VISIBLE_FRACTION * full_area``)
            and ``mask`` (bool (S, S), the visible pixels).
        clutter (only with ``return_clutter``): bool (S, S), the clutter pixels left visible;
            disjoint from every instance's mask.
    """
    size = _check_int("image_size", image_size, 32, _MAX_IMAGE_SIZE)
    min_objects, max_objects = _check_object_counts(min_objects, max_objects, _OBJECTS_LIMIT)
    scale = size / _REFERENCE_SIZE

    ground = _background(rng, size, scale)
    clutter = _draw_clutter_under(rng, ground, size, scale)
    image = ground.copy()
    owner = np.full((size, size), -1, np.int32)  # index of the object that shows at each pixel
    full, visible, classes, colours = [], [], [], []
    light_angle = rng.uniform(0.0, 2.0 * math.pi)
    light = (math.cos(light_angle), math.sin(light_angle))

    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        class_index = int(rng.integers(len(CLUTTER_CLASSES)))
        name = CLUTTER_CLASSES[class_index]
        placed = None
        for _attempt in range(_PLACEMENT_TRIES):
            mask, (y0, x0), centre, rotation, side, aspect = _object_mask(rng, name, size, scale)
            area = int(np.count_nonzero(mask))
            if area < _MIN_OBJECT_PIXELS:
                continue
            region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
            covered = owner[region][mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(full))
            if _keeps_visible(np.asarray(visible), np.asarray(full), lost):
                placed = (mask, region, centre, rotation, side, aspect, area, covered, lost)
                break
        if placed is None:
            continue
        mask, region, centre, rotation, side, aspect, area, covered, lost = placed

        amplitude = float(rng.uniform(*_TEXTURE_AMPLITUDE[name]))
        neighbours = [colours[i] for i in np.unique(covered[covered >= 0])]
        colour = _pick_colour(rng, ground[region][mask].mean(axis=0), neighbours, amplitude,
                              _MIN_BACKGROUND_DISTANCE, _MIN_OBJECT_DISTANCE)
        pattern = _object_pattern(rng, name, mask.shape, (region[0].start, region[1].start), centre,
                                  rotation, side, aspect, light)
        image[region][mask] = np.clip(colour[None, :] + amplitude * pattern[mask][:, None], 0.0, 255.0)
        owner[region][mask] = len(full)
        visible = [vis - int(n) for vis, n in zip(visible, lost)] + [area]
        full.append(area)
        classes.append(class_index)
        colours.append(colour)

    # Grass blades over everything: thin curves that may cut through objects (never below the rule).
    for _ in range(int(round(rng.integers(_BLADES[0], _BLADES[1] + 1) * scale))):
        points = _random_walk(rng, size, 3, (7.0, 27.0), scale)
        blade = np.zeros((size, size), np.uint8)
        cv2.polylines(blade, [points], False, 1, 1, cv2.LINE_8)
        blade = blade.astype(bool)
        x, y = np.clip(points[0], 0, size - 1)
        colour = _clutter_colour(rng, ground[y, x])
        covered = owner[blade]
        lost = np.bincount(covered[covered >= 0], minlength=len(full))
        if not blade.any() or not _keeps_visible(np.asarray(visible), np.asarray(full), lost):
            continue
        image[blade] = colour
        owner[blade] = -1
        clutter |= blade
        visible = [vis - int(n) for vis, n in zip(visible, lost)]

    # Camera: illumination ramp, slight blur, pixel noise.
    coords = np.arange(size, dtype=np.float32) / max(size - 1, 1) - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0.0, 2.0 * math.pi)
    gain = 1.0 + rng.uniform(0.2, 0.4) * (xx * math.cos(angle) + yy * math.sin(angle))
    image = cv2.GaussianBlur(image * gain[..., None], (0, 0), sigmaX=_BLUR_SIGMA)
    image += np.float32(rng.uniform(*_NOISE_SIGMA)) * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    instances = []
    areas = np.bincount(owner[owner >= 0], minlength=len(full))
    for index, extent in enumerate(ndimage.find_objects(owner + 1, max_label=len(full))):
        rows, cols = extent
        instances.append({
            "category_id": classes[index] + 1,
            "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
            "area": int(areas[index]),
            "full_area": full[index],
            "mask": owner == index,
        })
    if return_clutter:
        return image, instances, clutter & (owner < 0)
    return image, instances


def _render(rng, image_size, min_objects, max_objects):
    return render_clutter_image(rng, image_size, min_objects, max_objects)


CLUTTER = SyntheticDomain(
    name="clutter",
    description="JoinDet synthetic clutter",
    classes=CLUTTER_CLASSES,
    supercategory="clutter object",
    version=_CLUTTER_VERSION,
    render=_render,
    default_objects=_DEFAULT_OBJECTS,
    objects_limit=_OBJECTS_LIMIT,
    cache_name="clutter",
    dir_prefix="clutter_",
)


# --------------------------------------------------------------------------- files and registration
def generate_clutter_split(root, split, num_images, image_size=_D["image_size"], seed=_D["seed"],
                           min_objects=_DEFAULT_OBJECTS[0], max_objects=_DEFAULT_OBJECTS[1]):
    """Write one split of the clutter dataset (or reuse it) and return its COCO JSON path:
    ``joindet.data.generated.generate_split(CLUTTER, ...)`` (same caching, atomic write and lock)."""
    return generate_split(CLUTTER, root, split, num_images, image_size, seed, min_objects, max_objects)


def default_clutter_root():
    """``$JOINDET_CACHE/clutter`` if ``JOINDET_CACHE`` is set (non-empty), else ``~/.cache/joindet/clutter``."""
    return default_cache_root(CLUTTER.cache_name)


def register_clutter(name_prefix="clutter", root=None, **settings):
    """Register ``<prefix>_train``, ``<prefix>_val`` and ``<prefix>_train_unlabeled`` of the clutter
    domain: ``joindet.data.generated.register_domain(CLUTTER, ...)`` (same names, metadata and
    re-registration rules as the shapes set; ``root`` defaults to ``default_clutter_root()``).

    Returns:
        tuple[str, str, str]: the train, val and unlabeled dataset names.
    """
    return register_domain(CLUTTER, name_prefix, root, **settings)
