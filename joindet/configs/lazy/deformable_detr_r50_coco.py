# Supervised Deformable DETR (R50, 4 levels, 300 queries) on COCO 2017 with the paper's schedule:
# 50 epochs, lr x0.1 at epoch 40 -- the LazyConfig twin of configs/deformable_detr_r50_coco.yaml.
#
#   python train_net.py --config-file projects/JoinDet/configs/deformable_detr_r50_coco.py --num-gpus 8 \
#       train.init_checkpoint=path/to/backbone.pkl
from .common.data.coco import dataloader
from .common.models.deformable_detr import model
from .common.optim import AdamW as optimizer
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .common.train import train

# Epochs to iterations (common/schedule.py): 117,266 train2017 images with boxes at total batch 32
# = 3,665 iterations per epoch. Changing dataloader.train.total_batch_size needs a new train.max_iter.
ITERS_PER_EPOCH = iters_per_epoch(117266, 32)  # 3,665
train.max_iter = 50 * ITERS_PER_EPOCH  # 183,250
lr_multiplier = step_lr_multiplier(total_iters=50 * ITERS_PER_EPOCH, drop_iters=[40 * ITERS_PER_EPOCH])  # 146,600

train.output_dir = "output/deformable_detr_r50_coco"
# the rest of train as common/train.py: no init_checkpoint (set one, e.g. a converted SwAV or ImageNet R50
# backbone), a checkpoint every 5000 iterations, evaluation at the end (as TEST.EVAL_PERIOD 0), on CUDA
