# Deformable DETR (Zhu et al. 2021) as a LazyConfig: the same model as configs/Base-DeformableDETR.yaml
# with joindet/config.py's defaults. R50 (torchvision-style bottleneck, FrozenBN, stem + res2 frozen),
# res3-res5 + one stride-2 extra level (4 levels), d 256, 8 heads, 6+6 layers, FFN 1024, 4 sampling
# points, 300 queries, 80 classes; focal loss (alpha 0.25, gamma 2), matching costs class 2 / L1 5 /
# GIoU 2, loss weights 2 / 5 / 2, auxiliary losses on every decoder layer.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from joindet.modeling.criterion import SetCriterion, build_weight_dict
from joindet.modeling.deformable_detr import DeformableDETR
from joindet.modeling.deformable_transformer import DeformableTransformer
from joindet.modeling.matcher import HungarianMatcher

model = L(DeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,  # stem + res2 frozen
    ),
    in_features="${.backbone.out_features}",
    transformer=L(DeformableTransformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        num_feature_levels=4,  # len(in_features) backbone levels + stride-2 extra levels
        dec_n_points=4,
        enc_n_points=4,
        two_stage="${..two_stage}",
        two_stage_num_proposals="${..num_queries}",
    ),
    num_classes=80,
    num_queries=300,
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0
        ),
        weight_dict=L(build_weight_dict)(
            cls_weight=2.0,
            bbox_weight=5.0,
            giou_weight=2.0,
            # = transformer.num_decoder_layers - 1 with aux_loss (0 without): change it with the decoder
            # depth; joindet.engine.lazy checks the two agree before training.
            num_aux=5,
            two_stage="${...two_stage}",
        ),
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    pixel_mean=[123.675, 116.280, 103.530],  # RGB, torchvision / SwAV statistics
    pixel_std=[58.395, 57.120, 57.375],
    aux_loss=True,
    with_box_refine=False,
    two_stage=False,
    num_detections=100,
    size_divisibility=32,
)
