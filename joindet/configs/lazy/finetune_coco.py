# Fine-tune a JoinDet-pretrained Deformable DETR on COCO (supplement 5.2) -- the LazyConfig twin of
# configs/finetune_coco.yaml: the supervised R50 Deformable DETR (80 classes) initialised from the
# pretraining checkpoint, whose objectness and embedding heads JoinDetCheckpointer drops (a new 80-class
# layer is trained); 50 epochs, lr x0.1 at 40: deformable_detr_r50_coco.py but for its weights and output.
#
#   python train_net.py --config-file projects/JoinDet/configs/finetune_coco.py --num-gpus 8
from .deformable_detr_r50_coco import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/finetune_coco"
train.init_checkpoint = "output/pretrain/model_final.pth"  # joindet_pretrain_r50_coco.py's output
