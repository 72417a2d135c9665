# The data of JoinDet pretraining on COCO train2017 without labels, as configs/pretrain.yaml: every image
# (annotations never read, images without boxes kept: filter_empty=False), large-scale jitter at 1024
# (JOINDET.LSJ: resize by 0.1-2.0 of 1024, random 1024 crop, priors smaller than 4 px dropped) with
# horizontal flips, prior crops of 128 px for the embedding targets (JOINDET.EMBED_CROP_SIZE), RGB,
# total batch 32 (8 processes x 4).
#
# dataloader.train.mapper is a JoinDetDatasetMapper without its `active_priors`: joindet.engine.lazy
# builds it with the run's ActivePriors (the config's top-level active_priors, instantiated once and shared
# with the refresh hook). dataloader.prior_mapper
# reads the images for prior generation (version 0 from ncut_backbone, every refresh) at test-time
# size, 800 / 1333 (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST of the yacs route). There is no test set.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from joindet.data.mapper import DetrDatasetMapper
from joindet.data.pretrain_mapper import JoinDetDatasetMapper, build_lsj_augmentation

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
    mapper=L(JoinDetDatasetMapper)(
        augmentations=L(build_lsj_augmentation)(image_size=1024, min_scale=0.1, max_scale=2.0, flip=True),
        image_format="RGB",
        crop_size=128,
        min_box_size=4.0,
        # train_topk (JOINDET.PRIORS.TRAIN_TOPK): the mapper's default, 0 = every prior supervises
    ),
    total_batch_size=32,  # over all processes
    num_workers=4,
)

# unlabelled image folders to register, {name: folder} (DATASETS.IMAGE_FOLDERS of yacs); e.g. the override
# dataloader.image_folders.mine=/data/images with dataloader.train.dataset.names=mine pretrains on a folder
dataloader.image_folders = {}

dataloader.prior_mapper = L(DetrDatasetMapper)(
    is_train=False,
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice")],
    image_format="${..train.mapper.image_format}",
)
