# Fine-tune a JoinDet-pretrained Deformable DETR on PASCAL VOC 07+12 trainval and report COCO-style AP on
# VOC 2007 test (voc_2007_test_coco) -- the LazyConfig twin of configs/finetune_voc.yaml: 20 classes
# (a new classification layer; JoinDetCheckpointer drops the pretraining heads), 100 epochs, lr x0.1 at
# 70 (DETReg's schedule, supplement 5.2).
#
#   python train_net.py --config-file projects/JoinDet/configs/finetune_voc.py --num-gpus 8
from .common.data.voc import dataloader
from .common.schedule import iters_per_epoch, step_lr_multiplier
from .finetune_coco import model, optimizer, train  # finetune_coco.py's model, weights and optimiser

model.num_classes = 20

# Epochs to iterations (common/schedule.py): VOC 2007 trainval (5,011 images) + 2012 trainval (11,540),
# all with boxes, = 16,551 images at total batch 32 = 518 iterations per epoch.
ITERS_PER_EPOCH = iters_per_epoch(5011 + 11540, 32)  # 518
train.max_iter = 100 * ITERS_PER_EPOCH  # 51,800
lr_multiplier = step_lr_multiplier(total_iters=100 * ITERS_PER_EPOCH, drop_iters=[70 * ITERS_PER_EPOCH])  # 36,260

train.output_dir = "output/finetune_voc"
