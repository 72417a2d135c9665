# The mini Deformable DETR (sized for a 2-core CPU; the twin of configs/mini/deformable_detr_synth.yaml's
# model): R18 with trainable BatchNorm (no pretrained weights exist here; FrozenBN with random weights is an
# identity), nothing frozen, 3 levels (res3-res5), d 128, 8 heads, 3+3 layers, FFN 512, 50 queries, and
# every parameter at the base lr.


def make_mini(model, optimizer):
    """Shrink a Deformable DETR / JoinDet model config (and its optimizer's lr factors) in place."""
    model.backbone.stem.norm = "BN"
    model.backbone.stages.depth = 18
    model.backbone.stages.norm = "BN"
    del model.backbone.stages.stride_in_1x1  # R18's BasicBlock has no bottleneck stride option
    model.backbone.freeze_at = 0  # the backbone trains
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
