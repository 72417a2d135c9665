# The data of the mini JoinDet pretraining on the built-in synthetic shapes, as
# configs/mini/pretrain_synth.yaml: synth_train_unlabeled (the 400 train images without their labels),
# large-scale jitter at the images' own size 256 with scales 0.5-1.5 (JOINDET.LSJ) and flips, prior crops
# of 64 px (JOINDET.EMBED_CROP_SIZE), total batch 8, one loader worker; prior generation reads the images
# at their own size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST 256). pretrain_coco.py's loader and mappers (see
# there) with these settings; dataloader.synthetic and the resize as in synthetic.py.
# joindet.engine.lazy registers synth_* from dataloader.synthetic before anything is instantiated.
from joindet.data.generated import GENERATED_SET_DEFAULTS

from .pretrain_coco import dataloader
from .synthetic import RESIZE_TO_IMAGE_SIZE

dataloader.synthetic = dict(root="", **GENERATED_SET_DEFAULTS)

dataloader.train.dataset.names = "synth_train_unlabeled"
dataloader.train.mapper.augmentations.image_size = "${dataloader.synthetic.image_size}"
dataloader.train.mapper.augmentations.min_scale = 0.5
dataloader.train.mapper.augmentations.max_scale = 1.5
dataloader.train.mapper.crop_size = 64
dataloader.train.total_batch_size = 8  # over all processes
dataloader.train.num_workers = 1

dataloader.prior_mapper.augmentations = [RESIZE_TO_IMAGE_SIZE]
