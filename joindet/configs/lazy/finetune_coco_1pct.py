# Low-data fine-tuning on 1% of COCO train2017 (the seeded coco_2017_train_1pct subset of
# joindet.data.transfer, its image ids recorded in a JSON file) -- the LazyConfig twin of
# configs/finetune_coco_1pct.yaml: 2000 epochs, lr x0.1 at 1400 (supplement 5.2); otherwise finetune_coco.py.
#
#   python train_net.py --config-file projects/JoinDet/configs/finetune_coco_1pct.py --num-gpus 8
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .finetune_coco import dataloader, model, optimizer, train

dataloader.train.dataset.names = "coco_2017_train_1pct"

# Epochs to iterations (common/schedule.py): the subset draws round(1% of 118,287) = 1,183 image ids
# (as the yacs route counts it: the few drawn images without boxes are dropped by the loader later) at
# total batch 32 = 37 iterations per epoch.
ITERS_PER_EPOCH = iters_per_epoch(1183, 32)  # 37
train.max_iter = 2000 * ITERS_PER_EPOCH  # 74,000
lr_multiplier = step_lr_multiplier(total_iters=2000 * ITERS_PER_EPOCH, drop_iters=[1400 * ITERS_PER_EPOCH])  # 51,800

train.output_dir = "output/finetune_coco_1pct"
