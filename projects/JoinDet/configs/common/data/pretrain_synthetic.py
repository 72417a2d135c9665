# The data of the mini JoinDet pretraining on the built-in synthetic shapes, as
# configs/mini/pretrain_synth.yaml: synth_train_unlabeled (the 400 train images without their labels),
# large-scale jitter at the images' own size 256 with scales 0.5-1.5 (JOINDET.LSJ) and flips, prior crops
# of 64 px (JOINDET.EMBED_CROP_SIZE), total batch 8, one loader worker; prior generation reads the images
# at their own size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST 256). See pretrain_coco.py for the mappers.
# joindet.engine.lazy registers synth_* from dataloader.synthetic before anything is instantiated.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from joindet.data.mapper import DetrDatasetMapper
from joindet.data.pretrain_mapper import JoinDetDatasetMapper, build_lsj_augmentation

dataloader = OmegaConf.create()

dataloader.synthetic = dict(root="", num_train=400, num_val=100, image_size=256, seed=0)

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_train_unlabeled", filter_empty=False),
    mapper=L(JoinDetDatasetMapper)(
        augmentations=L(build_lsj_augmentation)(
            image_size="${dataloader.synthetic.image_size}", min_scale=0.5, max_scale=1.5, flip=True
        ),
        image_format="RGB",
        crop_size=64,
        min_box_size=4.0,
    ),
    total_batch_size=8,  # over all processes
    num_workers=1,
)

dataloader.prior_mapper = L(DetrDatasetMapper)(
    is_train=False,
    augmentations=[
        L(T.ResizeShortestEdge)(
            short_edge_length="${dataloader.synthetic.image_size}",
            max_size="${dataloader.synthetic.image_size}",
            sample_style="choice",
        ),
    ],
    image_format="${..train.mapper.image_format}",
)
