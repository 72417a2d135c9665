"""ResNet with a dilated res5 ("DC5") in torchvision's convention, for the official Deformable DETR DC5 models.

Detectron2's ``build_resnet_backbone`` with ``MODEL.RESNETS.RES5_DILATION 2`` removes res5's stride and
dilates all three res5 blocks. torchvision's ``replace_stride_with_dilation`` (the official Deformable
DETR / DETR DC5 backbone) gives the first layer4 block the previous dilation, 1, and dilates only the
others. Same weights, other receptive field: the converted official DC5 model differed by 0.40 on the
logits; with this builder by ~1e-6 (``tests/test_convert_deformable_detr.py``).
"""
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_resnet_dc5_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_dc5_backbone(cfg, input_shape):
    """Detectron2's ResNet (``MODEL.RESNETS.*``, which must set ``RES5_DILATION 2``) whose first res5 block
    has its 3x3 conv undilated (dilation 1, padding 1), as in torchvision."""
    if cfg.MODEL.RESNETS.RES5_DILATION != 2:
        raise ValueError(f"build_resnet_dc5_backbone needs MODEL.RESNETS.RES5_DILATION 2 (DC5), got "
                         f"{cfg.MODEL.RESNETS.RES5_DILATION}; use build_resnet_backbone for an undilated ResNet")
    backbone = build_resnet_backbone(cfg, input_shape)
    first = backbone.res5[0].conv2  # the bottleneck's 3x3 conv, padding = dilation keeps the map size
    first.dilation, first.padding = (1, 1), (1, 1)
    return backbone
