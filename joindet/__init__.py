"""JoinDet: unsupervised pretraining of a whole Deformable DETR with self-generated object priors.

Importing the package registers its meta-architectures with Detectron2.
"""
from . import modeling  # noqa: F401  (registers META_ARCH entries)
from .config import add_joindet_config

__all__ = ["add_joindet_config"]
