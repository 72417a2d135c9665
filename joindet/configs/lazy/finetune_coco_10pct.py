# Low-data fine-tuning on 10% of COCO train2017 (the seeded coco_2017_train_10pct subset of
# joindet.data.transfer, its image ids recorded in a JSON file) -- the LazyConfig twin of
# configs/finetune_coco_10pct.yaml: 400 epochs, lr x0.1 at 280 (supplement 5.2); otherwise finetune_coco.py.
#
#   python train_net.py --config-file projects/JoinDet/configs/finetune_coco_10pct.py --num-gpus 8
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .finetune_coco import dataloader, model, optimizer, train

dataloader.train.dataset.names = "coco_2017_train_10pct"

# Epochs to iterations (common/schedule.py): the subset draws round(10% of 118,287) = 11,829 image ids
# (as the yacs route counts it: the few drawn images without boxes are dropped by the loader later) at
# total batch 32 = 370 iterations per epoch.
ITERS_PER_EPOCH = iters_per_epoch(11829, 32)  # 370
train.max_iter = 400 * ITERS_PER_EPOCH  # 148,000
lr_multiplier = step_lr_multiplier(total_iters=400 * ITERS_PER_EPOCH, drop_iters=[280 * ITERS_PER_EPOCH])  # 103,600

train.output_dir = "output/finetune_coco_10pct"
