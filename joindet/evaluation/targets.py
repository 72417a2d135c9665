"""
Which priors supervise the detector, against a reference set of targets and, where the images have labels,
against the objects.

The detector of a pretraining trains on each image's ``JOINDET.PRIORS.TRAIN_TOPK`` highest-scored priors of the
current bank version (:func:`joindet.priors.bank.supervising_index`). Whether a refresh changes what the
detector learns is a question about those boxes, not about the ranking of the whole version (which
``evaluate_priors`` scores): :func:`compare_targets` says how many of a reference's targets (DETReg's: version
0's top 30 of selective search) still supervise, how many supervising boxes are new, and, with labels, how
many lie on an object and how many objects one of them hits. Every figure pools all images (a fraction of all
boxes, or of all objects), so an image with more boxes weighs more.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import BoxMode
from torchvision.ops import box_iou

from ..priors.bank import PriorVersion, supervising_index
from .prior_quality import gt_boxes_xywh

__all__ = ["KEPT_IOU", "NEW_IOU", "OBJECT_IOU", "compare_targets", "supervising_boxes"]

KEPT_IOU = 0.9  # a reference target still supervises when a supervising box overlaps it at least this much
NEW_IOU = 0.5  # a supervising box is new when it overlaps every reference target less than this
OBJECT_IOU = 0.5  # a supervising box lies on an object (and hits it) at this IoU, as AP50 counts a detection


def supervising_boxes(version: PriorVersion, image_id: int, train_topk: int) -> np.ndarray:
    """The boxes (k, 4) XYXY of ``image_id`` in ``version`` that supervise with ``train_topk``."""
    boxes, scores = version.get(image_id)
    return boxes[supervising_index(scores, train_topk)]


def _best_ious(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each box of ``a``'s best IoU with a box of ``b``, and each box of ``b``'s with a box of ``a`` (0 where the
    other set is empty), from one IoU matrix."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros(a.shape[0]), np.zeros(b.shape[0])
    iou = box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return iou.amax(1).numpy(), iou.amax(0).numpy()


def compare_targets(version: PriorVersion, train_topk: int, reference: PriorVersion, reference_topk: int,
                    labelled: Optional[Sequence[Mapping]] = None) -> Dict[str, Optional[float]]:
    """
    Args:
        version, train_topk: the priors under study and how many of each image's supervise (0 = all).
        reference, reference_topk: the reference targets (e.g. version 0 and DETReg's 30); it must hold every
            image of ``version``.
        labelled: Detectron2 dataset dicts with the images' boxes (same image ids), or None.
    Returns (percentages; None where the denominator is 0 or there are no labels):
        ``num_images``; ``supervising_per_image``; ``reference_kept``: the reference targets that a supervising box
        overlaps at IoU >= KEPT_IOU; ``new``: the supervising boxes that overlap every reference target at IoU <
        NEW_IOU; ``on_object``: the supervising boxes at IoU >= OBJECT_IOU with an object; ``objects_hit``: the
        objects that a supervising box overlaps at IoU >= OBJECT_IOU.
    """
    ids = [int(i) for i in version.image_ids]
    missing = [i for i in ids if i not in reference]
    if missing:
        raise ValueError(f"the reference lacks {len(missing)} of the {len(ids)} images (first: {missing[0]})")
    objects = None
    if labelled is not None:
        objects = {int(d["image_id"]): BoxMode.convert(gt_boxes_xywh(d), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                   for d in labelled}
        absent = [i for i in ids if i not in objects]
        if absent:
            raise ValueError(f"the labelled dataset lacks {len(absent)} of the {len(ids)} images "
                             f"(first: {absent[0]}): was it generated with the run's settings?")
    n = {"sup": 0, "ref": 0, "kept": 0, "new": 0, "on": 0, "obj": 0, "hit": 0}
    for i in ids:
        sup = supervising_boxes(version, i, train_topk)
        ref = supervising_boxes(reference, i, reference_topk)
        n["sup"] += sup.shape[0]
        n["ref"] += ref.shape[0]
        sup_to_ref, ref_to_sup = _best_ious(sup, ref)
        n["kept"] += int((ref_to_sup >= KEPT_IOU).sum())
        n["new"] += int((sup_to_ref < NEW_IOU).sum())
        if objects is not None:
            gt = objects[i]
            sup_to_gt, gt_to_sup = _best_ious(sup, gt)
            n["obj"] += gt.shape[0]
            n["on"] += int((sup_to_gt >= OBJECT_IOU).sum())
            n["hit"] += int((gt_to_sup >= OBJECT_IOU).sum())

    def pct(num, den):
        return 100.0 * n[num] / n[den] if n[den] else None

    labels = objects is not None
    return {
        "num_images": len(ids),
        "supervising_per_image": n["sup"] / len(ids) if ids else None,
        "reference_kept": pct("kept", "ref"),
        "new": pct("new", "sup"),
        "on_object": pct("on", "sup") if labels else None,
        "objects_hit": pct("hit", "obj") if labels else None,
    }
