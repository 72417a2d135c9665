# PASCAL VOC for Deformable DETR fine-tuning, as configs/finetune_voc.yaml: train on VOC 2007 + 2012
# trainval (Detectron2's voc_* sets, read from $DETECTRON2_DATASETS/VOC2007 and VOC2012), test on VOC
# 2007 test scored with COCO-style AP (voc_2007_test_coco, registered by joindet.data.transfer from
# voc_2007_test). Inputs, batch and workers as COCO (coco.py: Base-DeformableDETR.yaml's INPUT.*).
from .coco import dataloader

dataloader.train.dataset.names = ["voc_2007_trainval", "voc_2012_trainval"]
dataloader.test.dataset.names = "voc_2007_test_coco"
