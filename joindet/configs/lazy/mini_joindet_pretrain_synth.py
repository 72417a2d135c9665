# JoinDet pretraining sized for a 2-core CPU on the built-in synthetic set (no labels used) -- the
# LazyConfig twin of configs/mini/pretrain_synth.yaml. The model is mini_deformable_detr_synth.py's with
# JoinDet's heads: the frozen pretrained Lite0 backbone also gives the embedding targets (320-d pooled res5
# of each prior's crop, as the paper's "same SwAV encoder"); version 0 comes from selective search; the
# paper's refresh (NCut on the encoder output) every 100 iterations, merged with Soft-NMS of the merged
# scores (sigma 0.5); prior quality of every version is scored against synth_train's boxes. 300 iterations
# at batch 8, constant lr.
#
#   python train_net.py --config-file projects/JoinDet/configs/mini_joindet_pretrain_synth.py
from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts

from joindet.priors.selective_search import SelectiveSearchSource

from .common.data.pretrain_priors import active_priors, prior_hook  # noqa: F401  (part of the config)
from .common.data.pretrain_synthetic import dataloader
from .common.models.joindet import model
from .common.models.mini import make_mini
from .common.optim import AdamW as optimizer
from .common.schedule import step_lr_multiplier
from .common.train import train

make_mini(model, optimizer)
# JoinDet's heads
model.embed_dim = 320  # Lite0 res5 channels
model.embed_encoder = "backbone"  # the frozen backbone itself

prior_hook.init_source = L(SelectiveSearchSource)()
# refresh: the common default, the paper's ncut_encoder (configs/mini/pretrain_synth.yaml says why)
prior_hook.generator.feature_level = 1  # stride-16 level: 16 x 16 patches at 256 px
prior_hook.generator.batch_size = 8
prior_hook.smooth.soft_nms_sigma = 0.5  # not the paper's (0.0): duplicates of a higher-scored prior rank lower
prior_hook.period = 100
# the same images with their boxes: prior quality per version
prior_hook.eval_dicts = L(get_detection_dataset_dicts)(names="synth_train", filter_empty=False)

train.max_iter = 300
lr_multiplier = step_lr_multiplier(total_iters=300)

train.output_dir = "output/mini_pretrain_synth"
train.checkpointer.period = 100000  # only model_final
train.eval_period = 0  # nothing to evaluate (no test set)
train.device = "cpu"
