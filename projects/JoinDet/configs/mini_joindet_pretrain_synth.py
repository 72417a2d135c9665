# JoinDet pretraining sized for a 2-core CPU on the built-in synthetic set (no labels used) -- the
# LazyConfig twin of configs/mini/pretrain_synth.yaml. The model is mini_deformable_detr_synth.py's with
# JoinDet's heads. No pretrained backbone exists here, so: the R18 trains (BN) and a frozen copy of its
# initial weights gives the embedding targets (512-d res5); version 0 comes from selective search (NCut on
# a random network's features finds nothing: DESIGN.md section 5); the encoder's own NCut priors (stride-16
# level: 16 x 16 patches at 256 px) refresh it every 100 iterations; prior quality of every version is
# scored against synth_train's boxes. 300 iterations at batch 8, constant lr.
#
#   python train_net.py --config-file projects/JoinDet/configs/mini_joindet_pretrain_synth.py
from .common.data.pretrain_priors import joindet
from .common.data.pretrain_synthetic import dataloader
from .common.models.joindet import model
from .common.optim import AdamW as optimizer
from .common.schedule import step_lr_multiplier
from .common.train import train

# mini_deformable_detr_synth.py's model
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
# JoinDet's heads
model.embed_dim = 512  # R18 res5 channels
model.embed_encoder = "frozen_copy"

optimizer.params.backbone_multiplier = 1.0
optimizer.params.linear_proj_multiplier = 1.0

joindet.priors.init_source = "selective_search"
joindet.priors.topk = 30
joindet.priors.eval_dataset = "synth_train"  # the same images with their boxes: prior quality per version
joindet.ncut.feature_level = 1  # stride-16 level: 16 x 16 patches at 256 px
joindet.ncut.batch_size = 8
joindet.update_period_iters = 100

train.max_iter = 300
lr_multiplier = step_lr_multiplier(total_iters=300)

train.output_dir = "output/mini_pretrain_synth"
train.checkpointer.period = 100000  # only model_final
train.eval_period = 0  # nothing to evaluate (no test set)
train.device = "cpu"
