"""
Box Smooth Module (JoinDet supplement, sections 2.1-2.2).

Merges the precedent object priors (the supervision in use, "old") with the priors the model has
just generated ("new") into the next supervision, by IoU clustering and momentum-weighted averaging.
"""

from typing import Tuple, Union

import numpy as np
import torch
from torchvision.ops import box_iou, nms

__all__ = ["smooth_priors", "mean_best_iou"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 makes a singleton cluster reproduce its box bit-exactly after the cast back to
    # float32 ((w * b) / w); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _to_tensor(x, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _check_boxes_scores(boxes: torch.Tensor, scores: torch.Tensor, name: str):
    """Validate one (boxes (n, 4), scores (n,)) pair; an empty array of any shape means n = 0."""
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if scores.numel() == 0:
        scores = scores.reshape(0)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}_boxes must have shape (n, 4), got {tuple(boxes.shape)}")
    if scores.dim() != 1:
        raise ValueError(f"{name}_scores must have shape (n,), got {tuple(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{name}_boxes and {name}_scores disagree on the number of boxes: "
            f"{boxes.shape[0]} vs {scores.shape[0]}"
        )
    if not bool(torch.isfinite(boxes).all()) or not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name}_boxes / {name}_scores contain NaN or infinite values")
    if bool((boxes[:, 2] < boxes[:, 0]).any()) or bool((boxes[:, 3] < boxes[:, 1]).any()):
        raise ValueError(f"{name}_boxes must be XYXY with x2 >= x1 and y2 >= y1")
    return boxes, scores


def smooth_priors(
    old_boxes: ArrayLike,
    old_scores: ArrayLike,
    new_boxes: ArrayLike,
    new_scores: ArrayLike,
    momentum: float = 0.45,
    iou_threshold: float = 0.48,
    topk: int = 30,
) -> Tuple[ArrayLike, ArrayLike]:
    """
    Merge the precedent priors of one image with its current priors (the Box Smooth Module).

    Definition, with m = ``momentum``:

    1. Every box gets a weight w = score * m if it is an old (precedent) prior, and
       w = score * (1 - m) if it is a new (current) prior. Boxes with w <= 0 take no part, so
       m = 0 ignores the old set entirely and m = 1 the new one.
    2. Clustering: greedy by descending w, NMS-style. ``torchvision.ops.nms`` at ``iou_threshold``
       over all participating boxes (both sets together) gives the cluster seeds; every
       participating box joins the seed with which it has the highest IoU among the seeds where
       IoU > ``iou_threshold`` (a seed joins itself; NMS guarantees every other box such a seed).
    3. A cluster's box is the w-weighted mean of its members' coordinates.
    4. A cluster's score is m * mean(scores of its old members) + (1 - m) * mean(scores of its new
       members), a side without members contributing 0.
    5. The ``topk`` clusters with the highest scores are kept, sorted by descending score.

    Consequences: with m = 0 the result is the current priors after NMS (exactly the current
    priors when no two of them overlap above the threshold), with m = 1 the precedent priors;
    an old box and a new box with IoU <= ``iou_threshold`` are never merged.

    Args:
        old_boxes: (n_old, 4) XYXY absolute coordinates of the precedent priors.
        old_scores: (n_old,) their scores.
        new_boxes: (n_new, 4) XYXY absolute coordinates of the current priors.
        new_scores: (n_new,) their scores. Either set may be empty.
        momentum: m_s in [0, 1], the share of the precedent priors.
        iou_threshold: clustering IoU threshold in (0, 1).
        topk: the maximum number of priors returned (>= 1).

    Returns:
        boxes (k, 4) and scores (k,), k <= topk, sorted by descending score: numpy float32 arrays
        when all inputs are numpy (or lists), otherwise torch tensors on the inputs' device with the
        boxes' floating dtype (float32 for integer input). Computed in float64 internally.
    """
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if not 0.0 < float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
    if isinstance(topk, bool) or int(topk) != topk or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk}")
    momentum, iou_threshold, topk = float(momentum), float(iou_threshold), int(topk)

    inputs = (old_boxes, old_scores, new_boxes, new_scores)
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    return_torch = len(tensors) > 0
    device = tensors[0].device if return_torch else torch.device("cpu")
    out_dtype = torch.float32
    for b in (new_boxes, old_boxes):
        if isinstance(b, torch.Tensor) and b.is_floating_point():
            out_dtype = b.dtype
            break
    wdtype = _work_dtype(device)

    ob, os_ = _check_boxes_scores(
        _to_tensor(old_boxes, device, wdtype), _to_tensor(old_scores, device, wdtype), "old"
    )
    nb, ns = _check_boxes_scores(
        _to_tensor(new_boxes, device, wdtype), _to_tensor(new_scores, device, wdtype), "new"
    )

    boxes = torch.cat([ob, nb])  # (P, 4)
    scores = torch.cat([os_, ns])  # (P,)
    is_old = torch.cat(
        [
            torch.ones(ob.shape[0], dtype=torch.bool, device=device),
            torch.zeros(nb.shape[0], dtype=torch.bool, device=device),
        ]
    )
    weights = scores * torch.where(
        is_old,
        torch.tensor(momentum, dtype=wdtype, device=device),
        torch.tensor(1.0 - momentum, dtype=wdtype, device=device),
    )
    part = weights > 0
    boxes, scores, is_old, weights = boxes[part], scores[part], is_old[part], weights[part]

    if boxes.shape[0] == 0:
        out_boxes = boxes.new_zeros((0, 4))
        out_scores = scores.new_zeros((0,))
    else:
        seeds = nms(boxes, weights, iou_threshold)  # (S,), by descending weight
        num_clusters = seeds.numel()
        iou = box_iou(boxes, boxes[seeds]).nan_to_num_(0.0)  # (P, S); 0/0 for degenerate boxes
        # The best seed is above the threshold for every box (NMS suppressed it through one).
        cluster = iou.argmax(dim=1)  # (P,)
        cluster[seeds] = torch.arange(num_clusters, device=device)

        wsum = boxes.new_zeros(num_clusters).index_add_(0, cluster, weights)
        bsum = boxes.new_zeros((num_clusters, 4)).index_add_(0, cluster, weights[:, None] * boxes)
        cluster_boxes = bsum / wsum[:, None]

        old_f = is_old.to(wdtype)
        new_f = 1.0 - old_f
        n_old = boxes.new_zeros(num_clusters).index_add_(0, cluster, old_f)
        n_new = boxes.new_zeros(num_clusters).index_add_(0, cluster, new_f)
        s_old = boxes.new_zeros(num_clusters).index_add_(0, cluster, scores * old_f)
        s_new = boxes.new_zeros(num_clusters).index_add_(0, cluster, scores * new_f)
        mean_old = torch.where(n_old > 0, s_old / n_old.clamp(min=1), torch.zeros_like(s_old))
        mean_new = torch.where(n_new > 0, s_new / n_new.clamp(min=1), torch.zeros_like(s_new))
        cluster_scores = momentum * mean_old + (1.0 - momentum) * mean_new

        order = torch.sort(cluster_scores, descending=True, stable=True).indices[:topk]
        out_boxes, out_scores = cluster_boxes[order], cluster_scores[order]

    if return_torch:
        return out_boxes.to(out_dtype), out_scores.to(out_dtype)
    return (
        out_boxes.cpu().numpy().astype(np.float32),
        out_scores.cpu().numpy().astype(np.float32),
    )


def mean_best_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> float:
    """
    For each box of ``boxes_a`` the best IoU with any box of ``boxes_b``, averaged over ``boxes_a``.

    Used to log how much the priors changed between two consecutive versions.

    Args:
        boxes_a: (n, 4) XYXY boxes, numpy or torch.
        boxes_b: (k, 4) XYXY boxes, numpy or torch.

    Returns:
        A float in [0, 1]; 0.0 when either set is empty.
    """
    device = next(
        (b.device for b in (boxes_a, boxes_b) if isinstance(b, torch.Tensor)), torch.device("cpu")
    )
    wdtype = _work_dtype(device)
    a = _to_tensor(boxes_a, device, wdtype)
    b = _to_tensor(boxes_b, device, wdtype)
    if a.numel() == 0 or b.numel() == 0:
        return 0.0
    for t, name in ((a, "boxes_a"), (b, "boxes_b")):
        if t.dim() != 2 or t.shape[1] != 4:
            raise ValueError(f"{name} must have shape (n, 4), got {tuple(t.shape)}")
    iou = box_iou(a, b).nan_to_num_(0.0)  # (n, k)
    return float(iou.max(dim=1).values.mean())
