# Fine-tune a JoinDet-pretrained Deformable DETR on COCO (supplement 5.2) -- the LazyConfig twin of
# configs/finetune_coco.yaml: the supervised R50 Deformable DETR (80 classes) initialised from the
# pretraining checkpoint, whose objectness and embedding heads JoinDetCheckpointer drops (a new 80-class
# layer is trained); 50 epochs, lr x0.1 at 40.
#
#   python train_net.py --config-file projects/JoinDet/configs/finetune_coco.py --num-gpus 8
from .common.data.coco import dataloader
from .common.models.deformable_detr import model
from .common.optim import AdamW as optimizer
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .common.train import train

model.num_classes = 80

# Epochs to iterations (common/schedule.py): 117,266 train2017 images with boxes at total batch 32
# = 3,665 iterations per epoch. Changing dataloader.train.total_batch_size needs a new train.max_iter.
ITERS_PER_EPOCH = iters_per_epoch(117266, 32)  # 3,665
train.max_iter = 50 * ITERS_PER_EPOCH  # 183,250
lr_multiplier = step_lr_multiplier(total_iters=50 * ITERS_PER_EPOCH, drop_iters=[40 * ITERS_PER_EPOCH])  # 146,600

train.output_dir = "output/finetune_coco"
train.init_checkpoint = "output/pretrain/model_final.pth"  # joindet_pretrain_r50_coco.py's output
train.checkpointer.period = 5000
train.eval_period = 0  # evaluate at the end
train.device = "cuda"
