# Fine-tune the mini JoinDet checkpoint on 10% of the synthetic labels (synth_train_10pct: 40 of the 400
# images, seeded subset) -- the LazyConfig twin of configs/mini/finetune_synth_10pct.yaml and the
# counterpart of the 10% COCO setting: mini_deformable_detr_synth.py's model (6 classes; the pretraining
# heads of the checkpoint are dropped), 50 epochs, lr x0.1 at 35 (70% of the schedule, as in the paper).
#
#   python train_net.py --config-file projects/JoinDet/configs/mini_finetune_synth_10pct.py
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .mini_deformable_detr_synth import dataloader, model, optimizer, train

dataloader.train.dataset.names = "synth_train_10pct"

# Epochs to iterations (common/schedule.py): 40 images at total batch 8 = 5 iterations per epoch.
ITERS_PER_EPOCH = iters_per_epoch(40, 8)  # 5
train.max_iter = 50 * ITERS_PER_EPOCH  # 250
lr_multiplier = step_lr_multiplier(total_iters=50 * ITERS_PER_EPOCH, drop_iters=[35 * ITERS_PER_EPOCH])  # 175

train.output_dir = "output/mini_finetune_synth_10pct"
train.init_checkpoint = "output/mini_pretrain_synth/model_final.pth"  # mini_joindet_pretrain_synth.py's output
