"""
Random crop boxes: the version-0 object priors of the UP-DETR-like baseline.

UP-DETR pretrains DETR to localise random patches of the image. As fixed priors, each image gets
``num`` boxes whose width and height are independent uniform fractions of the image's width and
height (in ``[min_frac, max_frac]``) and whose position is uniform among the placements that keep
the box inside the image. Coordinates are continuous (float32), not rounded to pixels.

``image_rng(seed, image_id)`` gives each image its own generator, so an image's boxes depend only
on ``(seed, image_id)``: not on the dataset's order or size, nor on which process draws them.
"""
import numbers
from typing import Any, Dict, Sequence, Union

import numpy as np
from detectron2.config import configurable

from . import defaults as D
from .sources import PriorList, _check_dataset_dicts, register_prior_source

__all__ = ["random_crop_boxes", "image_rng", "RandomCropSource"]


def _check_frac(min_frac, max_frac):
    for name, value in (("min_frac", min_frac), ("max_frac", max_frac)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
    min_frac, max_frac = float(min_frac), float(max_frac)
    if not 0.0 < min_frac <= max_frac <= 1.0:
        raise ValueError(
            f"need 0 < min_frac <= max_frac <= 1, got min_frac={min_frac}, max_frac={max_frac}"
        )
    return min_frac, max_frac


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """
    The generator of one image: ``default_rng(SeedSequence([seed, image_id mod 2**64]))``.

    Args:
        seed: a non-negative integer.
        image_id: an integer (negative ids are taken modulo 2**64).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
        raise ValueError(f"image_id must be an integer, got {image_id!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(image_id) % (1 << 64)]))


def random_crop_boxes(
    height: int,
    width: int,
    num: int = 30,
    rng: Union[np.random.Generator, int, None] = None,
    min_frac: float = 0.1,
    max_frac: float = 0.8,
) -> np.ndarray:
    """
    ``num`` random boxes inside a ``height`` x ``width`` image.

    Box i has width ``u_i * width`` and height ``v_i * height`` with u_i, v_i ~ U[min_frac,
    max_frac] independently, and top-left corner ``(a_i * (width - w_i), b_i * (height - h_i))``
    with a_i, b_i ~ U[0, 1).

    Args:
        height, width: the image size in pixels (>= 1).
        num: the number of boxes (>= 0).
        rng: a ``numpy.random.Generator``, an integer seed, or None (fresh OS entropy: not
            reproducible).
        min_frac, max_frac: the range of a box side as a fraction of the image side,
            0 < min_frac <= max_frac <= 1.

    Returns:
        float32 (num, 4) XYXY absolute, within [0, width] x [0, height], x2 > x1, y2 > y1.
    """
    for name, value, minimum in (("height", height, 1), ("width", width, 1), ("num", num, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    min_frac, max_frac = _check_frac(min_frac, max_frac)
    if not isinstance(rng, np.random.Generator):
        if rng is not None and (isinstance(rng, bool) or not isinstance(rng, numbers.Integral)):
            raise ValueError(f"rng must be a numpy Generator, an integer seed or None, got {rng!r}")
        rng = np.random.default_rng(rng)

    size = np.array([width, height], dtype=np.float64)
    wh = rng.uniform(min_frac, max_frac, (int(num), 2)) * size
    xy = rng.random((int(num), 2)) * (size - wh)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    boxes[:, 2] = np.minimum(boxes[:, 2], width)  # guard against rounding past the border
    boxes[:, 3] = np.minimum(boxes[:, 3], height)
    return boxes.astype(np.float32)


@register_prior_source("random_crops")
class RandomCropSource:
    """
    Random crop priors (UP-DETR-like): ``random_crop_boxes(height, width, topk, image_rng(seed,
    image_id), min_frac, max_frac)`` per image, from the dicts' sizes (no image is read).

    Scores are all 1.0: random crops carry no ranking, and equal scores keep the Box Smooth
    Module and any top-K selection from favouring some crops by chance.

    Args:
        topk: boxes per image.
        seed: the base seed; an image's boxes depend only on (seed, image_id).
        min_frac, max_frac: the range of a box side as a fraction of the image side.
    """

    @configurable
    def __init__(self, topk: int = D.TOPK, seed: int = D.RANDOM_CROPS_SEED, min_frac: float = 0.1,
                 max_frac: float = 0.8):
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.topk, self.seed = int(topk), int(seed)
        self.min_frac, self.max_frac = _check_frac(min_frac, max_frac)

    @classmethod
    def from_config(cls, cfg, mapper=None) -> Dict[str, Any]:
        return {"topk": cfg.JOINDET.PRIORS.TOPK, "seed": cfg.JOINDET.PRIORS.SEED}

    def cache_key(self) -> Dict[str, Any]:
        return {"topk": self.topk, "seed": self.seed, "min_frac": self.min_frac,
                "max_frac": self.max_frac, "impl": 1}

    def __repr__(self) -> str:
        return (f"RandomCropSource(topk={self.topk}, seed={self.seed}, "
                f"min_frac={self.min_frac}, max_frac={self.max_frac})")

    def __call__(self, dataset_dicts: Sequence[dict], model=None) -> PriorList:
        """
        Args:
            dataset_dicts: dicts with ``height``, ``width`` and integer ``image_id``.
            model: unused.

        Returns:
            per image: boxes float32 (topk, 4) XYXY absolute and scores float32 (topk,) all 1.0.
        """
        _check_dataset_dicts(dataset_dicts, ["height", "width", "image_id"])
        results = []
        for d in dataset_dicts:
            rng = image_rng(self.seed, d["image_id"])
            boxes = random_crop_boxes(d["height"], d["width"], self.topk, rng, self.min_frac, self.max_frac)
            results.append((boxes, np.ones((self.topk,), np.float32)))
        return results
