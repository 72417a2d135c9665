"""
Box Smooth Module (JoinDet supplement, sections 2.1-2.2).

Merges the precedent object priors (the supervision in use, "old") with the priors the model has
just generated ("new") into the next supervision, by IoU clustering between the two sets and
momentum-weighted averaging (docs/design.md, "Box Smooth Module"), or, with the rule "replace", by
CutLER's self-training merge (the current priors replace the precedent ones they overlap).
:func:`smooth_priors_batched` does it for a whole bank version at once; :func:`smooth_priors` for one image.
Every function takes the module's settings as one :class:`BoxSmoothSettings` (m_s, the clustering threshold,
K, the Soft-NMS sigma, the rule, the least current score).
"""
import dataclasses
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.ops import box_iou

from detectron2.config import configurable

from . import defaults as D
from .bank import check_priors

__all__ = ["BoxSmoothSettings", "smooth_priors", "smooth_priors_batched", "soft_nms_scores", "smooth_prior_lists",
           "smooth_version_arrays", "merge_refresh", "mean_best_iou"]

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class BoxSmoothSettings:
    """The settings of the Box Smooth Module (the merge of a refresh), checked once when made (their defaults:
    :mod:`joindet.priors.defaults`).

    Attributes:
        momentum: m_s in [0, 1], the share of the precedent priors (``JOINDET.SMOOTH.MOMENTUM``).
        iou_threshold: the clustering IoU threshold in (0, 1) (``JOINDET.SMOOTH.IOU_THRESHOLD``).
        topk: K >= 1, the priors kept per image (``JOINDET.PRIORS.TOPK``).
        soft_nms_sigma: >= 0, Gaussian Soft-NMS of the merged scores; 0 = none, the paper's module
            (``JOINDET.SMOOTH.SOFT_NMS_SIGMA``).
        rule: "box_smooth" (the paper's clustering and averaging) or "replace" (CutLER's merge: the current
            priors replace the precedent ones they overlap) (``JOINDET.SMOOTH.RULE``).
        min_score: >= 0, current priors scored below it take no part (``JOINDET.SMOOTH.MIN_SCORE``).

    Built from a yacs config as ``BoxSmoothSettings(cfg)`` (``from_config``), in a LazyConfig as
    ``L(BoxSmoothSettings)(momentum=...)``.
    """

    momentum: float = D.SMOOTH_MOMENTUM
    iou_threshold: float = D.SMOOTH_IOU_THRESHOLD
    topk: int = D.TOPK
    soft_nms_sigma: float = D.SMOOTH_SOFT_NMS_SIGMA
    rule: str = D.SMOOTH_RULE
    min_score: float = D.SMOOTH_MIN_SCORE

    def __post_init__(self):
        momentum, iou_threshold, topk, sigma = self.momentum, self.iou_threshold, self.topk, self.soft_nms_sigma
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not 0.0 < float(iou_threshold) < 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        if isinstance(topk, bool) or int(topk) != topk or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk}")
        if not float(sigma) >= 0.0:
            raise ValueError(f"soft_nms_sigma must be >= 0 (0 = no Soft-NMS), got {sigma}")
        if self.rule not in D.SMOOTH_RULES:
            raise ValueError(f"rule must be one of {list(D.SMOOTH_RULES)}, got {self.rule!r}")
        if not float(self.min_score) >= 0.0:
            raise ValueError(f"min_score must be >= 0, got {self.min_score}")
        for name, value in (("momentum", float(momentum)), ("iou_threshold", float(iou_threshold)),
                            ("topk", int(topk)), ("soft_nms_sigma", float(sigma)),
                            ("min_score", float(self.min_score))):
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, cfg):
        s = cfg.JOINDET.SMOOTH
        return {"momentum": s.MOMENTUM, "iou_threshold": s.IOU_THRESHOLD, "topk": cfg.JOINDET.PRIORS.TOPK,
                "soft_nms_sigma": s.SOFT_NMS_SIGMA, "rule": s.RULE, "min_score": s.MIN_SCORE}


BoxSmoothSettings.__init__ = configurable(BoxSmoothSettings.__init__)  # BoxSmoothSettings(cfg) from a yacs config
_DEFAULT = BoxSmoothSettings()


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 makes a singleton cluster reproduce its box bit-exactly after the cast back to
    # float32 ((w * b) / w); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _to_tensor(x, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _iou_new_old(new_dense: torch.Tensor, old_dense: torch.Tensor) -> torch.Tensor:
    """IoU of every current box with every precedent box of the same image.

    new_dense (c, Kn, 4), old_dense (c, Ko, 4) XYXY (padding rows are zeros). Returns (c, Kn, Ko); a
    zero-area pair (0 / 0) gives 0."""
    n = new_dense[:, :, None, :]
    o = old_dense[:, None, :, :]
    iw = (torch.minimum(n[..., 2], o[..., 2]) - torch.maximum(n[..., 0], o[..., 0])).clamp(min=0)
    ih = (torch.minimum(n[..., 3], o[..., 3]) - torch.maximum(n[..., 1], o[..., 1])).clamp(min=0)
    inter = iw * ih
    area_n = (n[..., 2] - n[..., 0]) * (n[..., 3] - n[..., 1])
    area_o = (o[..., 2] - o[..., 0]) * (o[..., 3] - o[..., 1])
    return (inter / (area_n + area_o - inter)).nan_to_num_(0.0)


def _dense(rows: torch.Tensor, image: torch.Tensor, rank: torch.Tensor, num_images: int, width: int):
    """Scatter rows (P, 4) of images ``image`` (P,) at positions ``rank`` (P,) into (num_images, width, 4)."""
    out = rows.new_zeros((num_images, max(width, 1), 4))
    out[image, rank] = rows
    return out


def _ranks(counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of a flat per-image layout with ``counts`` (N,): its image index and its rank in the image."""
    image = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(image.numel(), device=counts.device) - starts[image]
    return image, rank


def soft_nms_scores(boxes: torch.Tensor, scores: torch.Tensor, image: torch.Tensor, num_images: int, sigma: float,
                    chunk_images: int = 4096) -> torch.Tensor:
    """
    Gaussian Soft-NMS (Bodla et al., 2017) of the scores of many images at once; the boxes stay.

    Per image, greedily: the highest-scored box not yet taken is taken, and every box not yet taken has
    its score multiplied by exp(-IoU(taken box, box)^2 / sigma); repeated until every box is taken. A box
    that duplicates a higher-scored one thus falls in the ranking, a box overlapping nothing keeps its score.

    Args:
        boxes (R, 4) XYXY, scores (R,), image (R,) int64: rows of ``num_images`` images in any order.
        sigma: > 0.
        chunk_images: images per block (bounds memory at chunk * K * K, K the most boxes of an image).

    Returns:
        the new scores (R,), in the rows' order.
    """
    if not sigma > 0:
        raise ValueError(f"soft-NMS sigma must be > 0, got {sigma}")
    out = scores.clone()
    if scores.numel() == 0:
        return out
    order = torch.sort(image, stable=True).indices  # rows grouped by image
    counts = torch.bincount(image, minlength=num_images)
    img, rank = _ranks(counts)
    k = int(counts.max())
    starts = (torch.cumsum(counts, 0) - counts).tolist() + [scores.numel()]
    for lo in range(0, num_images, chunk_images):
        hi = min(lo + chunk_images, num_images)
        rows = order[starts[lo]:starts[hi]]
        if rows.numel() == 0:
            continue
        sel = torch.arange(starts[lo], starts[hi], device=scores.device)
        dense = _dense(boxes[rows], img[sel] - lo, rank[sel], hi - lo, k)
        s = scores.new_full((hi - lo, k), float("-inf"))
        s[img[sel] - lo, rank[sel]] = scores[rows]
        iou = _iou_new_old(dense, dense)  # (c, k, k)
        alive = torch.isfinite(s)
        arange = torch.arange(hi - lo, device=scores.device)
        for _ in range(k):
            top = s.masked_fill(~alive, float("-inf")).argmax(dim=1)  # (c,)
            has = alive[arange, top]
            alive[arange[has], top[has]] = False
            decay = torch.exp(-iou[arange, top] ** 2 / sigma)  # (c, k)
            s = torch.where(alive & has[:, None], s * decay, s)
        out[rows] = s[img[sel] - lo, rank[sel]]
    return out


def _best_match(a_boxes, a_image, a_counts, b_boxes, b_image, b_counts, chunk_images):
    """For each row of set a, its highest IoU with a row of set b of the same image, and that row's rank in its
    image (-1 and 0 when the image has no b row). Both sets in the flat layout (rows grouped by image, in order),
    computed in blocks of ``chunk_images`` images (memory: chunk * Ka * Kb)."""
    device = a_boxes.device
    num_a, num_b, num_images = a_boxes.shape[0], b_boxes.shape[0], a_counts.numel()
    best_iou = a_boxes.new_full((num_a,), -1.0)
    best = torch.zeros((num_a,), dtype=torch.long, device=device)
    if num_a == 0 or num_b == 0:
        return best_iou, best
    _, a_rank = _ranks(a_counts)
    _, b_rank = _ranks(b_counts)
    # rows are grouped by image: the rows of images [lo, hi) are one contiguous range of each set
    a_ends = torch.cat([torch.cumsum(a_counts, 0) - a_counts, a_counts.new_tensor([num_a])]).tolist()
    b_ends = torch.cat([torch.cumsum(b_counts, 0) - b_counts, b_counts.new_tensor([num_b])]).tolist()
    ka, kb = int(a_counts.max()), int(b_counts.max())
    for lo in range(0, num_images, chunk_images):
        hi = min(lo + chunk_images, num_images)
        rows = torch.arange(a_ends[lo], a_ends[hi], device=device)
        brows = torch.arange(b_ends[lo], b_ends[hi], device=device)
        if rows.numel() == 0 or brows.numel() == 0:
            continue
        adense = _dense(a_boxes[rows], a_image[rows] - lo, a_rank[rows], hi - lo, ka)
        bdense = _dense(b_boxes[brows], b_image[brows] - lo, b_rank[brows], hi - lo, kb)
        iou = _iou_new_old(adense, bdense)  # (c, ka, kb)
        valid_b = torch.arange(bdense.shape[1], device=device)[None] < b_counts[lo:hi, None]
        iou = iou.masked_fill(~valid_b[:, None, :], -1.0)
        best_iou[rows], best[rows] = iou[a_image[rows] - lo, a_rank[rows]].max(dim=1)
    return best_iou, best


def _rank_and_keep(boxes, scores, cluster_image, num_images, topk, soft_nms_sigma, chunk_images):
    """Steps 3b and 4 of the merge: Soft-NMS of the scores (sigma > 0), then the ``topk`` highest-scored rows of
    each image, by descending score (stable: ties keep the input order), grouped by image."""
    if soft_nms_sigma > 0:  # 3b.
        scores = soft_nms_scores(boxes, scores, cluster_image, num_images, soft_nms_sigma, chunk_images)

    # 4. top K per image: by descending score (stable), then grouped by image (stable)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(cluster_image[order], stable=True).indices]
    counts = torch.bincount(cluster_image, minlength=num_images)
    _, rank = _ranks(counts)
    order = order[rank < topk]
    return boxes[order], scores[order], counts.clamp(max=topk)


def smooth_priors_batched(
    old_boxes: torch.Tensor,
    old_scores: torch.Tensor,
    old_counts: torch.Tensor,
    new_boxes: torch.Tensor,
    new_scores: torch.Tensor,
    new_counts: torch.Tensor,
    settings: BoxSmoothSettings = _DEFAULT,
    chunk_images: int = 4096,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The Box Smooth Module for many images at once (no Python loop over images or boxes).

    Each set is in a flat layout: the boxes of image 0, then of image 1, ...; ``*_counts`` (N,) gives
    the boxes per image (the same N images in both sets). Definition, per image, with m = ``settings.momentum``:

    1. A precedent box weighs w = m * score, a current box w = (1 - m) * score; boxes with w <= 0 take no
       part (so m = 0 gives exactly the current priors, m = 1 exactly the precedent ones).
    2. Clusters are formed *between* the two sets only: every precedent box seeds a cluster; a current box
       joins the precedent box with which it has the highest IoU, if that IoU exceeds ``iou_threshold``,
       and otherwise forms a cluster of its own. Two boxes of the same set are never merged.
    3. A cluster's box is the w-weighted mean of its members' coordinates; its score is
       m * (its precedent box's score) + (1 - m) * (mean score of its current members), a side without
       members contributing 0: a prior the model stops finding fades geometrically, a new one enters at
       (1 - m) of its score.
    3b. With ``settings.soft_nms_sigma`` > 0 (0, the default, is the paper's module): the cluster scores of each image
       go through Gaussian Soft-NMS (:func:`soft_nms_scores`), so that a cluster duplicating a higher-scored
       one ranks lower; no box is removed or moved.
    4. The ``topk`` clusters with the highest scores of each image are kept, sorted by descending score
       (ties: precedent clusters first, each set in its input order).

    ``settings.min_score`` > 0: current boxes scored below it take no part (step 1; CutLER's confidence
    threshold). ``settings.rule == "replace"`` merges as CutLER's self-training does instead of steps 2-3: the
    current boxes enter with their own scores, and a precedent box stays, with m * its score, only where no
    current box overlaps it at IoU > ``iou_threshold``; no box is averaged. Steps 3b and 4 follow.

    Args:
        old_boxes (P, 4), old_scores (P,), old_counts (N,): the precedent priors, XYXY absolute.
        new_boxes (Q, 4), new_scores (Q,), new_counts (N,): the current priors.
        settings: m_s, the clustering threshold, K, the Soft-NMS sigma (step 3b), the rule and the least
            current score.
        chunk_images: images per block of the IoU computation (bounds memory at chunk * Kn * Ko).
    Returns boxes (R, 4), scores (R,) and counts (N,) in the same flat layout, in the work dtype of the
    inputs (call with float64 for bit-exact singleton boxes).
    """
    momentum, iou_threshold, topk, soft_nms_sigma, rule = (settings.momentum, settings.iou_threshold, settings.topk,
                                                           settings.soft_nms_sigma, settings.rule)
    device = old_boxes.device
    num_images = old_counts.numel()
    if new_counts.numel() != num_images:
        raise ValueError(f"old_counts and new_counts disagree on the number of images: {num_images} vs "
                         f"{new_counts.numel()}")
    m = float(momentum)
    # 1. weights; non-participating boxes leave the layout (the counts follow)
    old_image, _ = _ranks(old_counts)
    new_image, _ = _ranks(new_counts)
    old_w, new_w = old_scores * m, new_scores * (1.0 - m)
    keep_old, keep_new = old_w > 0, (new_w > 0) & (new_scores >= settings.min_score)
    old_boxes, old_scores, old_w, old_image = old_boxes[keep_old], old_scores[keep_old], old_w[keep_old], old_image[keep_old]
    new_boxes, new_scores, new_w, new_image = new_boxes[keep_new], new_scores[keep_new], new_w[keep_new], new_image[keep_new]
    old_counts = torch.bincount(old_image, minlength=num_images)
    new_counts = torch.bincount(new_image, minlength=num_images)
    num_old = old_boxes.shape[0]

    if rule == "replace":
        # 2'. a precedent box stays where no current box overlaps it at more than the threshold
        best_iou, _ = _best_match(old_boxes, old_image, old_counts, new_boxes, new_image, new_counts, chunk_images)
        stays = best_iou <= iou_threshold
        boxes = torch.cat([old_boxes[stays], new_boxes])
        scores = torch.cat([m * old_scores[stays], new_scores])
        cluster_image = torch.cat([old_image[stays], new_image])
        return _rank_and_keep(boxes, scores, cluster_image, num_images, topk, soft_nms_sigma, chunk_images)

    # 2. each current box's best precedent box of its image; it joins that box's cluster above the threshold
    best_iou, best = _best_match(new_boxes, new_image, new_counts, old_boxes, old_image, old_counts, chunk_images)
    alone = best_iou <= iou_threshold
    old_starts = torch.cumsum(old_counts, 0) - old_counts

    # 3. clusters: precedent rows 0..P-1, then one per unjoined current box
    cluster = old_starts[new_image] + best  # the joined precedent row
    cluster[alone] = num_old + torch.arange(int(alone.sum()), device=device)
    num_clusters = num_old + int(alone.sum())
    cluster_image = torch.cat([old_image, new_image[alone]])
    wsum = torch.cat([old_w, new_w.new_zeros(num_clusters - num_old)]).index_add_(0, cluster, new_w)
    bsum = torch.cat([old_w[:, None] * old_boxes, old_boxes.new_zeros((num_clusters - num_old, 4))])
    bsum.index_add_(0, cluster, new_w[:, None] * new_boxes)
    n_new = new_w.new_zeros(num_clusters).index_add_(0, cluster, torch.ones_like(new_w))
    s_new = new_w.new_zeros(num_clusters).index_add_(0, cluster, new_scores)
    s_old = torch.cat([old_scores, old_scores.new_zeros(num_clusters - num_old)])
    boxes = bsum / wsum[:, None]
    scores = m * s_old + (1.0 - m) * torch.where(n_new > 0, s_new / n_new.clamp(min=1), torch.zeros_like(s_new))
    return _rank_and_keep(boxes, scores, cluster_image, num_images, topk, soft_nms_sigma, chunk_images)


def smooth_priors(
    old_boxes: ArrayLike,
    old_scores: ArrayLike,
    new_boxes: ArrayLike,
    new_scores: ArrayLike,
    settings: BoxSmoothSettings = _DEFAULT,
) -> Tuple[ArrayLike, ArrayLike]:
    """
    Merge the precedent priors of one image with its current priors (the Box Smooth Module, as defined
    in :func:`smooth_priors_batched`: clusters only between the two sets).

    Args:
        old_boxes: (n_old, 4) XYXY absolute coordinates of the precedent priors.
        old_scores: (n_old,) their scores.
        new_boxes: (n_new, 4) XYXY absolute coordinates of the current priors.
        new_scores: (n_new,) their scores. Either set may be empty.
        settings: m_s, the clustering threshold, K (the most priors returned) and the Soft-NMS sigma.

    Returns:
        boxes (k, 4) and scores (k,), k <= K, sorted by descending score: numpy float32 arrays
        when all inputs are numpy (or lists), otherwise torch tensors on the inputs' device with the
        boxes' floating dtype (float32 for integer input). Computed in float64 internally.
    """
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

    ob, os_ = check_priors(
        _to_tensor(old_boxes, device, wdtype), _to_tensor(old_scores, device, wdtype), "the old priors", valid=True
    )
    nb, ns = check_priors(
        _to_tensor(new_boxes, device, wdtype), _to_tensor(new_scores, device, wdtype), "the new priors", valid=True
    )
    counts = lambda n: torch.tensor([n], dtype=torch.long, device=device)  # noqa: E731
    out_boxes, out_scores, _ = smooth_priors_batched(
        ob, os_, counts(ob.shape[0]), nb, ns, counts(nb.shape[0]), settings)
    if return_torch:
        return out_boxes.to(out_dtype), out_scores.to(out_dtype)
    return (
        out_boxes.cpu().numpy().astype(np.float32),
        out_scores.cpu().numpy().astype(np.float32),
    )


def smooth_version_arrays(
    old_boxes: np.ndarray,
    old_scores: np.ndarray,
    old_offsets: np.ndarray,
    new_boxes: np.ndarray,
    new_scores: np.ndarray,
    new_offsets: np.ndarray,
    settings: BoxSmoothSettings = _DEFAULT,
    chunk_images: int = 16384,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Box Smooth Module over a whole bank version in the bank's own layout (numpy, float32 boxes,
    ``offsets`` (num_images + 1,) as in ``PriorVersion``), for the same images in both sets.

    Blocks of ``chunk_images`` images go through :func:`smooth_priors_batched` (float64) one after the
    other, so the working memory is that of one block, whatever the size of the version; the result is
    written into arrays of at most ``num_images x settings.topk`` rows. No Python call per image.
    Returns (boxes (R, 4) float32, scores (R,) float32, offsets (num_images + 1,) int64).
    """
    topk = settings.topk
    old_offsets, new_offsets = np.asarray(old_offsets, np.int64), np.asarray(new_offsets, np.int64)
    if old_offsets.shape != new_offsets.shape or old_offsets.ndim != 1 or old_offsets.size < 1:
        raise ValueError(f"old_offsets {old_offsets.shape} and new_offsets {new_offsets.shape} must both be "
                         "(num_images + 1,)")
    num_images = old_offsets.size - 1
    old_counts, new_counts = np.diff(old_offsets), np.diff(new_offsets)
    capacity = int(np.minimum(old_counts + new_counts, topk).sum())
    out_boxes = np.empty((capacity, 4), np.float32)
    out_scores = np.empty((capacity,), np.float32)
    out_counts = np.zeros((num_images,), np.int64)
    row = 0
    for lo in range(0, num_images, chunk_images):
        hi = min(lo + chunk_images, num_images)
        o = slice(old_offsets[lo], old_offsets[hi])
        n = slice(new_offsets[lo], new_offsets[hi])
        ob, os_ = check_priors(torch.as_tensor(old_boxes[o], dtype=torch.float64),
                               torch.as_tensor(old_scores[o], dtype=torch.float64), "the old priors", valid=True)
        nb, ns = check_priors(torch.as_tensor(new_boxes[n], dtype=torch.float64),
                              torch.as_tensor(new_scores[n], dtype=torch.float64), "the new priors", valid=True)
        boxes, scores, counts = smooth_priors_batched(
            ob, os_, torch.as_tensor(old_counts[lo:hi]), nb, ns, torch.as_tensor(new_counts[lo:hi]), settings)
        k = boxes.shape[0]
        out_boxes[row:row + k] = boxes.numpy()
        out_scores[row:row + k] = scores.numpy()
        out_counts[lo:hi] = counts.numpy()
        row += k
    offsets = np.concatenate([[0], np.cumsum(out_counts)]).astype(np.int64)
    return out_boxes[:row], out_scores[:row], offsets


def smooth_prior_lists(
    old: Sequence[Tuple[np.ndarray, np.ndarray]],
    new: Sequence[Tuple[np.ndarray, np.ndarray]],
    settings: BoxSmoothSettings = _DEFAULT,
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """:func:`smooth_version_arrays` over aligned per-image lists of (boxes (k, 4), scores (k,)) numpy pairs
    (precedent and current priors of the same images); returns float32 pairs per image."""
    if len(old) != len(new):
        raise ValueError(f"{len(old)} precedent and {len(new)} current prior sets: they must be aligned")

    def flat(pairs):
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b, _ in pairs]
        scores = [np.asarray(s, np.float32).reshape(-1) for _, s in pairs]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int64)
        if not pairs:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), offsets
        return np.concatenate(boxes), np.concatenate(scores), offsets

    boxes, scores, offsets = smooth_version_arrays(*flat(old), *flat(new), settings)
    return [(boxes[a:b], scores[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def merge_refresh(previous, current, image_ids, settings: BoxSmoothSettings = _DEFAULT):
    """What a refresh publishes for ``image_ids``: the precedent priors (``previous.get(id)``) smoothed
    with the current ones (``current[id]``) by the Box Smooth Module of ``settings``, except that an image for
    which the generator found nothing (no boxes, or no entry: an image the mapper could not read, or one no
    training view showed) keeps its precedent priors unchanged. Returns (dict image_id -> (boxes, scores),
    images kept)."""
    found = [i for i in image_ids if i in current and len(current[i][0]) > 0]
    merged = smooth_prior_lists([previous.get(i) for i in found], [current[i] for i in found], settings)
    out = {i: previous.get(i) for i in image_ids}
    out.update(zip(found, merged))
    return out, len(image_ids) - len(found)


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
