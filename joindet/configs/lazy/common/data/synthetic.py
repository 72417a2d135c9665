# JoinDet's built-in synthetic shapes (joindet.data.synthetic), as configs/mini/deformable_detr_synth.yaml:
# 400 train / 100 val images of 256 x 256 px, 6 classes, trained and tested at their own size (the
# resize follows dataloader.synthetic.image_size), horizontal flips, total batch 8, COCO box AP.
# coco.py's loaders, mappers and evaluator with these datasets, sizes, batch and workers.
# joindet.engine.lazy registers synth_train / synth_val / synth_train_unlabeled from
# dataloader.synthetic before anything is instantiated; the images are generated on first use under
# root ("" = $JOINDET_CACHE/synthetic, else ~/.cache/joindet/synthetic).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from joindet.data.generated import GENERATED_SET_DEFAULTS

from .coco import dataloader

dataloader.synthetic = dict(root="", **GENERATED_SET_DEFAULTS)  # num_train 400, num_val 100, image_size 256, seed 0

# the images' own size, whatever dataloader.synthetic.image_size is set to
RESIZE_TO_IMAGE_SIZE = L(T.ResizeShortestEdge)(
    short_edge_length="${dataloader.synthetic.image_size}",
    max_size="${dataloader.synthetic.image_size}",
    sample_style="choice",
)

dataloader.train.dataset.names = "synth_train"
dataloader.train.mapper.augmentations = [RESIZE_TO_IMAGE_SIZE, L(T.RandomFlip)(horizontal=True)]
dataloader.train.total_batch_size = 8  # over all processes
dataloader.train.num_workers = 1

dataloader.test.dataset.names = "synth_val"
dataloader.test.mapper.augmentations = [RESIZE_TO_IMAGE_SIZE]
dataloader.test.num_workers = 1
