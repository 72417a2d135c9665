# JoinDet's pretraining model as a LazyConfig: the Deformable DETR of deformable_detr.py (same backbone,
# transformer, matcher and loss weights) as configs/pretrain.yaml builds it -- one class, "object"
# (class-agnostic objectness), the ObjectEmbeddingCriterion (loss_embed, weight 1.0 = JOINDET.EMBED_LOSS_WEIGHT,
# final decoder layer only), an embedding head predicting the 2048-d pooled res5 of the prior's crop
# (JOINDET.EMBED_DIM) computed by the frozen detector backbone itself (JOINDET.EMBED_ENCODER "backbone"),
# and the whole backbone frozen (MODEL.BACKBONE.FREEZE_AT 5). The crop size (JOINDET.EMBED_CROP_SIZE)
# is an argument of the pretraining mapper (common/data/pretrain_*.py).
from joindet.modeling.joindet import JoinDet, ObjectEmbeddingCriterion

from .deformable_detr import model

model._target_ = JoinDet
model.num_classes = 1  # criterion.num_classes follows
model.backbone.freeze_at = 5  # stem + res2-res5: the whole (SwAV) backbone is frozen
model.criterion._target_ = ObjectEmbeddingCriterion
model.criterion.weight_dict.extra = {"loss_embed": 1.0}
model.embed_dim = 2048  # = the embedding encoder's res5 channels (R50)
model.embed_encoder = "backbone"  # "frozen_copy": a frozen copy of the initial backbone (when the backbone trains)
# objectness_target (JOINDET.PRIORS.OBJECTNESS_TARGET) and loss_weight (JOINDET.PRIORS.LOSS_WEIGHT): JoinDet's
# defaults, "one"
