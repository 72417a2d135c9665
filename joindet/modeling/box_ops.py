"""Box conversions that torchvision lacks: between image-normalised (cx, cy, w, h) and absolute
(x1, y1, x2, y2) boxes.

Deformable DETR predicts and matches boxes as (cx, cy, w, h) normalised by the image's size, while
Detectron2's ``Instances`` hold absolute (x1, y1, x2, y2) boxes in pixels. Plain format changes are
``torchvision.ops.box_convert``; pairwise GIoU is ``torchvision.ops.generalized_box_iou``.
"""

from typing import Sequence, Union

import torch
from torchvision.ops import box_convert

__all__ = ["box_cxcywh_norm_to_xyxy_abs", "box_xyxy_abs_to_cxcywh_norm"]


def _scale(boxes: torch.Tensor, image_size: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
    """(w, h, w, h) as a tensor of ``boxes``' dtype and device, from ``image_size`` = (h, w)."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size}")
    h, w = (float(s) for s in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got (height={h}, width={w})")
    return boxes.new_tensor([w, h, w, h])


def box_cxcywh_norm_to_xyxy_abs(
    boxes: torch.Tensor, image_size: Union[Sequence[int], torch.Tensor]
) -> torch.Tensor:
    """
    Args:
        boxes: (..., 4) float, (cx, cy, w, h) normalised to [0, 1] by the image's size.
        image_size: (height, width) of the image in pixels.

    Returns:
        (..., 4) float, absolute (x1, y1, x2, y2) in pixels.
    """
    return box_convert(boxes, "cxcywh", "xyxy") * _scale(boxes, image_size)


def box_xyxy_abs_to_cxcywh_norm(
    boxes: torch.Tensor, image_size: Union[Sequence[int], torch.Tensor]
) -> torch.Tensor:
    """
    Args:
        boxes: (..., 4) float, absolute (x1, y1, x2, y2) in pixels.
        image_size: (height, width) of the image in pixels.

    Returns:
        (..., 4) float, (cx, cy, w, h) normalised by the image's size.
    """
    return box_convert(boxes / _scale(boxes, image_size), "xyxy", "cxcywh")
