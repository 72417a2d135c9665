# JoinDet's built-in synthetic shapes (joindet.data.synthetic), as configs/mini/deformable_detr_synth.yaml:
# 400 train / 100 val images of 256 x 256 px, 6 classes, trained and tested at their own size (the
# resize follows dataloader.synthetic.image_size), horizontal flips, total batch 8, COCO box AP.
# joindet.engine.lazy registers synth_train / synth_val / synth_train_unlabeled from
# dataloader.synthetic before anything is instantiated; the images are generated on first use under
# root ("" = $JOINDET_CACHE/synthetic, else ~/.cache/joindet/synthetic).
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator

from joindet.data.mapper import DetrDatasetMapper
from joindet.engine.trainer import has_compiled_ops

dataloader = OmegaConf.create()

dataloader.synthetic = dict(root="", num_train=400, num_val=100, image_size=256, seed=0)

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length="${dataloader.synthetic.image_size}",
                max_size="${dataloader.synthetic.image_size}",
                sample_style="choice",
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
    ),
    total_batch_size=8,  # over all processes
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length="${dataloader.synthetic.image_size}",
                max_size="${dataloader.synthetic.image_size}",
                sample_style="choice",
            ),
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),
    use_fast_impl=L(has_compiled_ops)(),
)
