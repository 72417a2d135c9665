"""Deformable DETR and JoinDet models (registered in Detectron2's META_ARCH_REGISTRY on import) and
the timm backbone (registered in BACKBONE_REGISTRY)."""
from . import backbone  # noqa: F401  (registers build_timm_backbone)
from .deformable_detr import DeformableDETR
from .joindet import JoinDet

__all__ = ["DeformableDETR", "JoinDet"]
