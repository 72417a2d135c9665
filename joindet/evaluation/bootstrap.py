"""
How much of a fine-tuned AP is the evaluation set's own noise: the bootstrap over the evaluation images.

``bootstrap_ap(coco_gt, detections, num_images, resamples, seed)`` draws ``resamples`` sets of
``num_images`` images with replacement from the ground truth's images and scores the same detections on
each with pycocotools' COCOeval (an image drawn twice counts twice: it is copied), so the spread of the returned APs is
the part of a run's AP that comes from which images happen to be in the evaluation set. Drawing
``num_images`` smaller than the set tells how noisy a smaller evaluation set would be.
"""
import contextlib
import io
import numbers
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["coco_ap", "resampled_set", "bootstrap_ap", "bootstrap_ap_sizes"]


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def coco_ap(coco_gt, detections: List[dict]) -> float:
    """The bbox AP (0-100, COCO's AP@[.5:.95]) of the COCO-format ``detections`` on every image of
    ``coco_gt`` (a pycocotools ``COCO``); NaN when no image has a ground-truth box."""
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return 0.0 if coco_gt.getAnnIds() else float("nan")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap = float(evaluator.stats[0])
    return 100.0 * ap if ap >= 0 else float("nan")


def resampled_set(coco_gt, detections_by_image: Dict[int, List[dict]], image_ids: Sequence[int]):
    """The evaluation set made of ``image_ids`` (repeats allowed): a ``COCO`` whose images are renumbered
    1..n, each a copy of the drawn image with its boxes, and the detections copied onto the copies.
    (COCOeval scores each image id once, so a repeat must be a distinct image to count twice.)"""
    images, annotations, detections = [], [], []
    for new_id, image_id in enumerate(image_ids, 1):
        images.append({**coco_gt.imgs[image_id], "id": new_id})
        for ann in coco_gt.imgToAnns.get(image_id, []):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id})
        detections.extend({**d, "image_id": new_id} for d in detections_by_image.get(image_id, []))
    dataset = {"images": images, "annotations": annotations, "categories": coco_gt.dataset["categories"]}
    return _coco(dataset), detections


def bootstrap_ap_sizes(coco_gt, detections: List[dict], sizes: Sequence[Optional[int]] = (None,),
                       resamples: int = 100, seed: int = 0) -> Dict[str, object]:
    """
    The bootstrap at several set sizes: the whole-set AP and the grouping of the detections by image are
    computed once, then each size draws its own ``resamples`` sets from ``seed`` (so a size's draws do not
    depend on which other sizes are asked for).

    Args:
        coco_gt: a pycocotools ``COCO`` of the evaluation set.
        detections: COCO-format results (``coco_instances_results.json``: image_id, category_id, bbox
            XYWH, score), category ids those of ``coco_gt``.
        sizes: images per resample, one entry per size (None: as many as the set has).
        resamples: the number of resampled sets (>= 2).
        seed: the seed of the draws (the same seed draws the same sets for every detection file, so two
            methods' APs are compared on the same resampled sets).

    Returns:
        {"ap": AP on the whole set, "by_size": [{"num_images", "resamples", "seed", "mean", "std" (ddof 1)
        of the resampled APs, "aps": the resampled APs}, one per entry of ``sizes``]}.
    """
    ids = sorted(coco_gt.getImgIds())
    if not ids:
        raise ValueError("the ground truth has no images")
    sizes = [len(ids) if n is None else _check_int("num_images", n, 1) for n in sizes]
    resamples = _check_int("resamples", resamples, 2)
    unknown = {d.get("image_id") for d in detections} - set(ids)
    if unknown:
        raise ValueError(f"detections on images the ground truth lacks: {sorted(unknown)[:10]} "
                         "(a detection file of another evaluation set?)")
    by_image: Dict[int, List[dict]] = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    by_size = []
    for num_images in sizes:
        rng = np.random.default_rng(seed)
        arr = np.asarray([coco_ap(*resampled_set(coco_gt, by_image, rng.choice(ids, size=num_images, replace=True)))
                          for _ in range(resamples)], dtype=np.float64)
        by_size.append({"num_images": num_images, "resamples": resamples, "seed": seed,
                        "mean": float(np.nanmean(arr)), "std": float(np.nanstd(arr, ddof=1)),
                        "aps": [float(a) for a in arr]})
    return {"ap": coco_ap(coco_gt, detections), "by_size": by_size}


def bootstrap_ap(coco_gt, detections: List[dict], num_images: Optional[int] = None, resamples: int = 100,
                 seed: int = 0) -> Dict[str, object]:
    """:func:`bootstrap_ap_sizes` at one set size, flattened: {"ap", "num_images", "resamples", "seed",
    "mean", "std", "aps"}."""
    result = bootstrap_ap_sizes(coco_gt, detections, [num_images], resamples, seed)
    return {"ap": result["ap"], **result["by_size"][0]}
