"""Deformable DETR and JoinDet models (registered in Detectron2's META_ARCH_REGISTRY on import)."""
from .deformable_detr import DeformableDETR
from .joindet import JoinDet

__all__ = ["DeformableDETR", "JoinDet"]
