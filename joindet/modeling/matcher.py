"""Hungarian matcher of Deformable DETR (focal-style class cost, L1 and GIoU box costs)."""

from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "check_outputs_and_targets"]


def check_outputs_and_targets(
    outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
) -> None:
    """
    Raise ValueError unless ``outputs`` and ``targets`` follow the conventions:

    - ``outputs["pred_logits"]``: (B, Q, C) float logits; ``outputs["pred_boxes"]``: (B, Q, 4)
      float, normalised (cx, cy, w, h);
    - ``targets``: B dicts with ``labels`` (n_i,) int64 in [0, C) and ``boxes`` (n_i, 4) float,
      normalised (cx, cy, w, h); n_i may be 0.
    """
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"outputs lacks '{key}' (has {sorted(outputs)})")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(f"pred_logits must be (B, Q, C), got {tuple(logits.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"pred_boxes must be (B, Q, 4) with pred_logits' (B, Q) = {tuple(logits.shape[:2])}, "
            f"got {tuple(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
    num_classes = logits.shape[-1]
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}] must hold 'labels' and 'boxes', has {sorted(t)}")
        labels, tboxes = t["labels"], t["boxes"]
        if labels.dim() != 1 or labels.dtype != torch.int64:
            raise ValueError(
                f"targets[{i}]['labels'] must be (n,) int64, "
                f"got {tuple(labels.shape)} {labels.dtype}"
            )
        if tboxes.dim() != 2 or tboxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"targets[{i}]['boxes'] must be ({labels.shape[0]}, 4) to match its labels, "
                f"got {tuple(tboxes.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"targets[{i}]['labels'] must lie in [0, {num_classes}), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment between the Q predictions and the n_i targets of each image, minimising
    ``cost_class * C_class + cost_bbox * C_L1 + cost_giou * C_giou`` where, for a prediction with
    probability p = sigmoid(logit) at the target's class,

    - C_class = alpha (1-p)^gamma (-log(p + 1e-8)) - (1-alpha) p^gamma (-log(1-p + 1e-8)),
    - C_L1 = L1 distance between the (cx, cy, w, h) boxes,
    - C_giou = -GIoU of the (x1, y1, x2, y2) boxes.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        negative = {k: v for k, v in costs.items() if v < 0}
        if negative:
            raise ValueError(f"matcher costs must be >= 0, got {negative}")
        if all(v == 0 for v in costs.values()):
            raise ValueError(f"at least one matcher cost must be > 0, got {costs}")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            pred_logits: (N, C) float logits.
            pred_boxes: (N, 4) float, normalised (cx, cy, w, h).
            tgt_labels: (M,) int64 in [0, C).
            tgt_boxes: (M, 4) float, normalised (cx, cy, w, h).

        Returns:
            (N, M) float32 cost of assigning prediction i to target j.
        """
        prob = pred_logits.float().sigmoid()[:, tgt_labels]  # (N, M)
        pred_boxes, tgt_boxes = pred_boxes.float(), tgt_boxes.float()
        a, g = self.focal_alpha, self.focal_gamma
        neg_cost = (1 - a) * prob.pow(g) * (-(1 - prob + 1e-8).log())
        pos_cost = a * (1 - prob).pow(g) * (-(prob + 1e-8).log())
        c_class = pos_cost - neg_cost
        c_bbox = torch.cdist(pred_boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(
            box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, C) float logits, ``pred_boxes`` (B, Q, 4) float,
                normalised (cx, cy, w, h). Other keys are ignored.
            targets: B dicts with ``labels`` (n_i,) int64 and ``boxes`` (n_i, 4) float, normalised
                (cx, cy, w, h).

        Returns:
            B tuples (pred_idx, tgt_idx) of CPU int64 tensors of length min(Q, n_i), sorted by
            pred_idx: prediction pred_idx[k] of image i is assigned to its target tgt_idx[k].
        """
        check_outputs_and_targets(outputs, targets)
        bs, num_queries = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(bs)]
        # One cost matrix for the whole batch (one device->host copy), then one assignment per
        # image.
        cost = self.cost_matrix(
            outputs["pred_logits"].flatten(0, 1),
            outputs["pred_boxes"].flatten(0, 1),
            torch.cat([t["labels"] for t in targets]),
            torch.cat([t["boxes"] for t in targets]),
        )
        cost = cost.view(bs, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError(
                "matching cost is not finite: predictions or target boxes hold NaN/inf "
                "or degenerate (zero-area) boxes"
            )
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(c[i].numpy())  # rows come out sorted
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}"
        )
