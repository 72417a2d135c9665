# JoinDet pretraining with the paper's settings (supplement 5.1) -- the LazyConfig twin of
# configs/pretrain.yaml: R50 initialised from SwAV and frozen, multi-scale Deformable DETR with the
# objectness and object-embedding heads, 50 epochs on COCO train2017 without labels (lr x0.1 at 40),
# AdamW 2e-4, wd 1e-4, K = 30 priors per image, version 0 from NCut on the SwAV backbone's res4, priors
# refreshed every 10 epochs from the encoder's stride-32 level, Box Smooth m_s 0.45 / IoU 0.48,
# large-scale jitter at 1024.
#
#   python train_net.py --config-file projects/JoinDet/configs/joindet_pretrain_r50_coco.py --num-gpus 8
from .common.data.pretrain_coco import dataloader
from .common.data.pretrain_priors import active_priors, prior_hook  # noqa: F401  (part of the config)
from .common.models.joindet import model
from .common.optim import AdamW as optimizer
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .common.train import train

# common/data/pretrain_priors.py's components with their defaults are the paper's: version 0 from ncut_backbone
# (NCut on the SwAV backbone's res4), K = 30, Box Smooth m_s 0.45 / IoU 0.48.
prior_hook.generator.feature_level = 2  # refreshes cut the encoder level of res5 (stride 32)

# Epochs to iterations (common/schedule.py): pretraining reads every train2017 image (118,287, those
# without boxes included) at total batch 32 = 3,697 iterations per epoch. Changing
# dataloader.train.total_batch_size needs new train.max_iter and prior_hook.period.
ITERS_PER_EPOCH = iters_per_epoch(118287, 32)  # 3,697
train.max_iter = 50 * ITERS_PER_EPOCH  # 184,850
lr_multiplier = step_lr_multiplier(total_iters=50 * ITERS_PER_EPOCH, drop_iters=[40 * ITERS_PER_EPOCH])  # 147,880
prior_hook.period = 10 * ITERS_PER_EPOCH  # 36,970: refresh every 10 epochs (JOINDET.UPDATE_PERIOD)

train.output_dir = "output/pretrain"
train.init_checkpoint = "checkpoints/swav_800ep_r50_d2.pth"  # made by: python -m joindet.tools.convert_swav
# the rest of train as common/train.py: a checkpoint every 5000 iterations, on CUDA; eval_period 0 (no test set)
