"""How the ``rescore`` refreshes score a precedent prior from the model's predictions on its image.

One function for both the generator that runs its own forward pass (``rescore``) and the scores recorded
during the training steps (``rescore_online``), chosen by ``JOINDET.REFRESH.RESCORE_QUALITY``:

- ``objectness_x_iou``: max over queries of objectness x IoU(query box, prior). The IoU factor rewards the
  priors the model reproduces exactly, and a detector reproduces a large box more exactly than a small one:
  on the clutter domain (15 small objects per image) it ranks boxes around groups of objects first.
- ``matched_objectness`` (the default): the objectness of the query whose box overlaps the prior most (0 when
  no query box overlaps it): whether the model thinks there is an object *there*, not how well it repeats
  the box. With it the last prior version beats version 0 on both mini domains (docs/experiments/prior_quality.md);
  with ``objectness_x_iou`` only on shapes.
"""
import torch
from torchvision.ops import box_iou

__all__ = ["DEFAULT_RESCORE_QUALITY", "RESCORE_QUALITIES", "check_rescore_quality", "rescore_quality"]

RESCORE_QUALITIES = ("objectness_x_iou", "matched_objectness")
DEFAULT_RESCORE_QUALITY = "matched_objectness"  # JOINDET.REFRESH.RESCORE_QUALITY's default (joindet/config.py)


def check_rescore_quality(quality: str) -> str:
    """``quality`` if it is one of :data:`RESCORE_QUALITIES`, else ``ValueError`` naming the config key."""
    if quality not in RESCORE_QUALITIES:
        raise ValueError(f"JOINDET.REFRESH.RESCORE_QUALITY: unknown rescore quality {quality!r}; "
                         f"choose one of {list(RESCORE_QUALITIES)}")
    return quality


def rescore_quality(priors: torch.Tensor, pred_boxes: torch.Tensor, objectness: torch.Tensor,
                    quality: str) -> torch.Tensor:
    """
    Args:
        priors: (k, 4) XYXY; pred_boxes: (Q, 4) XYXY in the same coordinates; objectness: (Q,) in [0, 1].
        quality: one of :data:`RESCORE_QUALITIES`.
    Returns (k,) scores in [0, 1], in the dtype of ``objectness``.
    """
    check_rescore_quality(quality)
    if priors.shape[0] == 0 or pred_boxes.shape[0] == 0:
        return objectness.new_zeros((priors.shape[0],))
    iou = box_iou(priors.to(pred_boxes.dtype), pred_boxes)  # (k, Q)
    if quality == "objectness_x_iou":
        return (iou * objectness[None]).amax(1)
    best_iou, best = iou.max(1)
    return torch.where(best_iou > 0, objectness[best], torch.zeros_like(best_iou, dtype=objectness.dtype))
