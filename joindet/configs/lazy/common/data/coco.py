# COCO 2017 for Deformable DETR, as configs/Base-DeformableDETR.yaml: RGB images, multi-scale training
# (shorter side 480-800 in steps of 32, longer side <= 1333) with horizontal flips, test at 800 / 1333,
# total batch 32 (8 processes x 4), COCO box AP with pycocotools. Datasets are Detectron2's built-in
# coco_2017_* names, read from $DETECTRON2_DATASETS/coco.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator

from joindet.data.mapper import DetrDatasetMapper
from joindet.evaluation.coco import has_compiled_ops

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                max_size=1333,
                sample_style="choice",
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
    ),
    total_batch_size=32,  # over all processes
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice")],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# The C++ COCOeval comes with Detectron2's compiled _C; without it, pycocotools' own (decided when
# the evaluator is built, on the machine that runs it).
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),
    use_fast_impl=L(has_compiled_ops)(),
)
