"""Set criterion of Deformable DETR: sigmoid focal classification loss, L1 and GIoU box losses,
on the final decoder layer, every intermediate layer (``aux_outputs``) and the two-stage
proposals (``enc_outputs``)."""

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from fvcore.nn import sigmoid_focal_loss
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from .matcher import check_outputs_and_targets

__all__ = ["SetCriterion", "build_weight_dict"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]

BASE_LOSSES = ("loss_ce", "loss_bbox", "loss_giou")


def build_weight_dict(
    cls_weight: float,
    bbox_weight: float,
    giou_weight: float,
    num_aux: int,
    two_stage: bool,
    extra: Optional[Mapping[str, float]] = None,
) -> Dict[str, float]:
    """
    Weights of every loss that :class:`SetCriterion` returns.

    Args:
        cls_weight, bbox_weight, giou_weight: weights of ``loss_ce``, ``loss_bbox``, ``loss_giou``.
        num_aux: number of intermediate decoder layers with auxiliary losses (decoder layers - 1);
            adds ``loss_ce_0`` ... ``loss_giou_{num_aux-1}`` with the same weights.
        two_stage: also add ``loss_ce_enc``, ``loss_bbox_enc``, ``loss_giou_enc``.
        extra: weights of further losses computed on the final decoder layer only (e.g.
            ``{"loss_embed": 1.0}``), added unchanged, without suffixes.

    Returns:
        dict loss name -> weight.
    """
    if num_aux < 0:
        raise ValueError(f"num_aux must be >= 0, got {num_aux}")
    base = dict(zip(BASE_LOSSES, (float(cls_weight), float(bbox_weight), float(giou_weight))))
    weights = dict(base)
    for i in range(num_aux):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    if two_stage:
        weights.update({f"{k}_enc": v for k, v in base.items()})
    for k, v in (extra or {}).items():
        if k in weights:
            raise ValueError(f"extra weight '{k}' would override a base loss weight")
        weights[k] = float(v)
    return weights


class SetCriterion(nn.Module):
    """
    Matches predictions to targets with ``matcher`` and computes the losses named in ``losses``
    (keys of ``self.loss_map``) for the final decoder layer, each auxiliary layer (suffix ``_i``)
    and the two-stage encoder proposals (suffix ``_enc``, matched class-agnostically: every target
    label is set to 0).

    A subclass adds a loss by adding ``name -> fn`` to ``self.loss_map``, where
    ``fn(outputs, targets, indices, num_boxes) -> Dict[str, Tensor]``; losses listed in ``losses``
    but not in ``aux_losses`` are computed on the final decoder layer only.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Mapping[str, float],
        losses: Sequence[str] = ("labels", "boxes"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_losses: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            num_classes: C, number of foreground classes (columns of ``pred_logits``; there is no
                "no-object" column).
            matcher: called as ``matcher(outputs, targets)``, returns B (pred_idx, tgt_idx) tuples,
                e.g. :class:`HungarianMatcher`.
            weight_dict: loss name -> weight (see :func:`build_weight_dict`), used by
                :meth:`weighted`.
            losses: names of the losses to compute, keys of ``self.loss_map``.
            focal_alpha, focal_gamma: parameters of the sigmoid focal loss.
            aux_losses: the losses computed on ``aux_outputs`` and ``enc_outputs``; None = all of
                ``losses``.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        self.aux_losses = self.losses if aux_losses is None else tuple(aux_losses)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.loss_map: Dict[str, Callable[..., Dict[str, torch.Tensor]]] = {
            "labels": self.loss_labels,
            "boxes": self.loss_boxes,
        }

    def _check_loss_names(self) -> None:
        """ValueError for a name in ``losses``/``aux_losses`` that ``loss_map`` lacks (checked at
        each forward, so that a subclass can add entries to ``loss_map`` after ``__init__``)."""
        unknown = [n for n in (*self.losses, *self.aux_losses) if n not in self.loss_map]
        if unknown:
            raise ValueError(f"unknown losses {unknown}; known: {sorted(self.loss_map)}")
        not_main = [n for n in self.aux_losses if n not in self.losses]
        if not_main:
            raise ValueError(f"aux_losses {not_main} are not in losses {list(self.losses)}")

    @staticmethod
    def _matched(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
        """(batch_idx, pred_idx), each (K,) int64 over all K matched pairs of the batch."""
        batch_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(indices)])
        pred_idx = torch.cat([p for p, _ in indices])
        return batch_idx, pred_idx

    def loss_labels(self, outputs, targets, indices: Indices, num_boxes: float):
        """
        Sigmoid focal loss against one-hot targets (matched queries: their target's class; all
        other queries: all zeros), summed over (B, Q, C) and divided by ``num_boxes``. A target dict with
        ``quality`` (n,) in [0, 1] makes its matched queries' target that value instead of 1 (a soft
        target: the focal loss's alpha and modulating factor interpolate between the two classes).

        Returns:
            {"loss_ce": scalar float tensor}
        """
        logits = outputs["pred_logits"]  # (B, Q, C)
        batch_idx, pred_idx = self._matched(indices)
        batch_idx, pred_idx = batch_idx.to(logits.device), pred_idx.to(logits.device)
        labels = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]
        )
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        if any("quality" in t for t in targets):
            value = torch.cat([
                t.get("quality", torch.ones_like(t["labels"], dtype=torch.float32))[j.to(t["labels"].device)].float()
                for t, (_, j) in zip(targets, indices)
            ]).to(logits.device)
        else:
            value = 1.0
        onehot[batch_idx, pred_idx, labels.to(logits.device)] = value
        weight = self.label_loss_weight(outputs, targets, indices)
        if weight is None:
            loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        else:
            loss = (sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                       reduction="none") * weight[..., None]).sum()
        return {"loss_ce": loss / num_boxes}

    def label_loss_weight(self, outputs, targets, indices: Indices) -> Optional[torch.Tensor]:
        """A (B, Q) weight of each query's classification terms, or None (all 1): a matched query's is its
        target's ``weight`` (see :meth:`pair_weights`), every other query's 1. A subclass may change it (e.g.
        to drop the no-object terms of some queries)."""
        pair = self.pair_weights(targets, indices)
        if pair is None:
            return None
        logits = outputs["pred_logits"]
        weight = torch.ones(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        batch_idx, pred_idx = self._matched(indices)
        weight[batch_idx.to(logits.device), pred_idx.to(logits.device)] = pair.to(logits.device, logits.dtype)
        return weight

    @staticmethod
    def pair_weights(targets, indices: Indices) -> Optional[torch.Tensor]:
        """(K,) float32 loss weights of the K matched pairs, in :meth:`_matched` order, when a target dict has
        ``weight`` (n,) (a per-target loss weight: its matched query's classification, box and any other
        per-pair terms are multiplied by it; a target dict without it weighs 1); None when none has one."""
        if not any("weight" in t for t in targets):
            return None
        return torch.cat([
            t.get("weight", torch.ones(len(t["labels"]), device=t["labels"].device))[j.to(t["labels"].device)].float()
            for t, (_, j) in zip(targets, indices)
        ])

    def loss_boxes(self, outputs, targets, indices: Indices, num_boxes: float):
        """
        L1 distance between the matched (cx, cy, w, h) boxes and 1 - GIoU of their
        (x1, y1, x2, y2) forms, each summed over the matched pairs (weighted by :meth:`pair_weights` when
        the targets have them) and divided by ``num_boxes``.

        Returns:
            {"loss_bbox": scalar float tensor, "loss_giou": scalar float tensor}
        """
        pred = outputs["pred_boxes"]  # (B, Q, 4)
        batch_idx, pred_idx = self._matched(indices)
        src = pred[batch_idx.to(pred.device), pred_idx.to(pred.device)].float()  # (K, 4)
        tgt = torch.cat(
            [t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)]
        ).to(device=pred.device, dtype=torch.float32)
        weight = self.pair_weights(targets, indices)
        if weight is None:
            loss_bbox = F.l1_loss(src, tgt, reduction="sum")
            loss_giou = generalized_box_iou_loss(
                box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"), reduction="sum"
            )
        else:  # per-target loss weights: each pair's terms scaled by its target's weight
            weight = weight.to(pred.device)
            loss_bbox = (F.l1_loss(src, tgt, reduction="none").sum(-1) * weight).sum()
            loss_giou = (generalized_box_iou_loss(
                box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"), reduction="none"
            ) * weight).sum()
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": loss_giou / num_boxes}

    def get_loss(self, name: str, outputs, targets, indices: Indices, num_boxes: float):
        """The single entry point to every loss: ``self.loss_map[name](outputs, targets, indices,
        num_boxes)`` -> dict of scalar tensors."""
        if name not in self.loss_map:
            raise ValueError(f"unknown loss '{name}'; known: {sorted(self.loss_map)}")
        return self.loss_map[name](outputs, targets, indices, num_boxes)

    def get_num_boxes(self, targets, device: torch.device) -> float:
        """Number of target boxes averaged over the processes (all-reduced when the world size is
        > 1), at least 1."""
        num_boxes = torch.tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float32, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1:
            torch.distributed.all_reduce(num_boxes)
        return max(num_boxes.item() / world_size, 1.0)

    def _losses_for(self, names, outputs, targets, num_boxes, suffix=""):
        indices = self.matcher(outputs, targets)
        losses = {}
        for name in names:
            for k, v in self.get_loss(name, outputs, targets, indices, num_boxes).items():
                losses[k + suffix] = v
        return losses

    def forward(
        self, outputs: Dict, targets: Sequence[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, C) float logits and ``pred_boxes`` (B, Q, 4) normalised
                (cx, cy, w, h) of the final decoder layer; optionally ``aux_outputs``, a list of
                dicts with the same two keys for each intermediate layer, and ``enc_outputs``, a
                dict with ``pred_logits`` (B, S, C') and ``pred_boxes`` (B, S, 4) for the two-stage
                proposals.
            targets: B dicts with ``labels`` (n_i,) int64 in [0, C) and ``boxes`` (n_i, 4) float,
                normalised (cx, cy, w, h).

        Returns:
            dict of unweighted scalar losses: ``loss_ce``, ``loss_bbox``, ``loss_giou``, the same
            suffixed ``_0``, ``_1``, ... for ``aux_outputs`` and ``_enc`` for ``enc_outputs``.
        """
        self._check_loss_names()
        check_outputs_and_targets(outputs, targets)
        if outputs["pred_logits"].shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {outputs['pred_logits'].shape[-1]} classes, "
                f"the criterion {self.num_classes}"
            )
        num_boxes = self.get_num_boxes(targets, outputs["pred_logits"].device)

        main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        losses = self._losses_for(self.losses, main, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", ())):
            losses.update(self._losses_for(self.aux_losses, aux, targets, num_boxes, f"_{i}"))
        if "enc_outputs" in outputs:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(
                self._losses_for(
                    self.aux_losses, outputs["enc_outputs"], agnostic, num_boxes, "_enc"
                )
            )
        return losses

    def weighted(self, losses: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``losses`` multiplied by ``self.weight_dict``; losses with no weight are dropped."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, losses={list(self.losses)}, "
            f"aux_losses={list(self.aux_losses)}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}"
        )
