"""Dataset mapper for JoinDet pretraining: the image's current priors become the targets."""
import copy

import numpy as np
import torch
from torchvision.ops import roi_align

from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ..priors import defaults as D
from ..priors.bank import supervising_index
from .image_io import SkippedImages, UnusableImage, read_image
from .mapper import describe_datasets

__all__ = ["JoinDetDatasetMapper", "ResizeScaleKeepingPixels", "build_lsj_augmentation"]


class ResizeScaleKeepingPixels(T.ResizeScale):
    """Detectron2's ``ResizeScale`` whose output keeps at least one pixel on each side.

    ``ResizeScale`` rounds each side to the nearest pixel; a long thin image at a small scale (e.g. 400 x 20
    px into 0.1 x a 64 px target: 6 x 0.32 px) rounds its shorter side to 0 px and the resize then fails.
    Here that side becomes 1 px (the aspect ratio is off by under a pixel; boxes follow the same resize).
    """

    def _get_resize(self, image: np.ndarray, scale: float) -> T.Transform:
        tfm = super()._get_resize(image, scale)
        if tfm.new_h >= 1 and tfm.new_w >= 1:
            return tfm
        return T.ResizeTransform(tfm.h, tfm.w, max(tfm.new_h, 1), max(tfm.new_w, 1), tfm.interp)


def build_lsj_augmentation(image_size, min_scale, max_scale, flip=True):
    """Large-scale jitter (Ghiasi et al. 2021): resize by a random factor of ``image_size`` then a
    random ``image_size`` crop (no padding here: Deformable DETR pads batches itself, with a mask)."""
    augs = [
        ResizeScaleKeepingPixels(min_scale=min_scale, max_scale=max_scale, target_height=image_size,
                                 target_width=image_size),
        T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False),
    ]
    if flip:
        augs.append(T.RandomFlip(horizontal=True))
    return augs


def crop_priors(image, boxes, size):
    """Crops of ``boxes`` from ``image`` resized to ``size`` x ``size`` (bilinear, ``roi_align``).

    image: (3, H, W) uint8 tensor; boxes: (n, 4) float32 XYXY pixels. Returns (n, 3, size, size) uint8.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    crops = roi_align(image[None].float(), [boxes.float()], output_size=size, spatial_scale=1.0,
                      sampling_ratio=2, aligned=True)
    return crops.round().clamp(0, 255).to(torch.uint8)


class JoinDetDatasetMapper:
    """Reads the image, looks up its priors in the active bank version, applies LSJ + flip to both,
    drops priors that leave the crop (or shrink below ``min_box_size``), and adds (with ``train_topk`` > 0
    only the image's ``train_topk`` highest-scored priors are used, before the augmentation):

    - ``image``: (3, H, W) uint8 tensor in ``image_format``;
    - ``instances``: ``gt_boxes`` (the priors, XYXY pixels of the augmented image), ``gt_classes`` zeros,
      ``gt_scores`` (the priors' scores), ``gt_prior_index`` (each one's position in the image's bank entry);
    - ``prior_crops``: (n, 3, crop_size, crop_size) uint8, the priors cropped from the augmented image;
    - ``prior_version``: the bank version the priors came from; ``num_priors``: the length of the entry;
      ``prior_best_score``: the highest score of the entry (0.0 for an empty one).

    An image that cannot be used (:func:`joindet.data.image_io.read_image` raises ``UnusableImage``) makes
    the mapper return None, so that Detectron2's ``MapDataset`` maps another image; ``self.skipped``
    counts and logs the skips, and stops with an error naming ``dataset_names`` once as many consecutive
    images as the active bank version holds (or its limit) were unusable.
    """

    @configurable
    def __init__(self, *, augmentations, image_format, active_priors, crop_size=128, min_box_size=4.0,
                 train_topk=D.TRAIN_TOPK, dataset_names=()):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.active_priors = active_priors
        self.crop_size = crop_size
        self.min_box_size = min_box_size
        self.train_topk = int(train_topk)
        label = type(self).__name__ + (f" on {describe_datasets(dataset_names)}" if dataset_names else "")
        self.skipped = SkippedImages(label)

    @classmethod
    def from_config(cls, cfg, active_priors):
        lsj = cfg.JOINDET.LSJ
        return {
            "augmentations": build_lsj_augmentation(lsj.IMAGE_SIZE, lsj.MIN_SCALE, lsj.MAX_SCALE,
                                                    flip=cfg.INPUT.RANDOM_FLIP != "none"),
            "image_format": cfg.INPUT.FORMAT,
            "active_priors": active_priors,
            "crop_size": cfg.JOINDET.EMBED_CROP_SIZE,
            "min_box_size": cfg.JOINDET.LSJ.MIN_BOX_SIZE,
            "train_topk": cfg.JOINDET.PRIORS.TRAIN_TOPK,
            "dataset_names": tuple(cfg.DATASETS.TRAIN),
        }

    def __call__(self, dataset_dict):
        """Returns the mapped dict, or None for an unusable image."""
        d = copy.deepcopy(dataset_dict)
        priors = self.active_priors.current()
        expected = (d["height"], d["width"]) if "height" in d and "width" in d else None
        try:
            image = read_image(d["file_name"], format=self.image_format, expected_size=expected)
        except UnusableImage as e:
            self.skipped.dataset_size = len(priors)  # the bank holds every image of the dataset
            self.skipped.skip(e)
            return None
        boxes, scores = priors.get(d["image_id"])
        num_priors = len(scores)
        best_score = float(np.max(scores)) if num_priors else 0.0
        index = supervising_index(scores, self.train_topk)  # each supervising prior's position in the bank entry
        if index.shape[0] < num_priors:  # only the best-scored priors supervise
            boxes, scores = np.asarray(boxes)[index], np.asarray(scores)[index]
        aug_input = T.AugInput(image, boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        self.augmentations(aug_input)
        image = aug_input.image
        h, w = image.shape[:2]
        boxes = torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        boxes = boxes[keep]
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))[keep]

        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        instances.gt_scores = scores
        instances.gt_prior_index = torch.as_tensor(index[keep.numpy()], dtype=torch.int64)
        d["image"] = image_t
        d["instances"] = instances
        d["prior_crops"] = crop_priors(image_t, boxes, self.crop_size)
        d["prior_version"] = priors.version
        d["num_priors"] = num_priors
        d["prior_best_score"] = best_score
        d.pop("annotations", None)
        self.skipped.used_one()
        return d
