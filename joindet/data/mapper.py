"""Dataset mapper for supervised Deformable DETR training and evaluation."""
import copy

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T

from .image_io import SkippedImages, UnusableImage, read_image

__all__ = ["DetrDatasetMapper", "describe_datasets"]


def describe_datasets(names) -> str:
    """``names`` joined for log lines and errors, each with its image folder (``image_root``) when known."""
    parts = []
    for name in names:
        root = MetadataCatalog.get(name).get("image_root") if name in MetadataCatalog.list() else None
        parts.append(f"{name} (images in {root})" if root else name)
    return ", ".join(parts)


class DetrDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` (augmentations from ``INPUT.*``: multi-scale resize, flip, crop) for
    detection, with images read by :func:`joindet.data.image_io.read_image`. Detection only: the semantic
    segmentation files and precomputed proposals that ``DatasetMapper`` also handles are not read (Deformable
    DETR uses neither).

    An image that cannot be used (``UnusableImage``: missing, corrupt, extreme aspect ratio, ...) makes
    the mapper return None, so that Detectron2's ``MapDataset`` maps another image in its place; the skip
    is counted in ``self.skipped`` (:class:`SkippedImages`), which logs it and stops with an error naming
    the dataset when nothing usable is left. At test time the same happens (a refresh pass over the images
    or an evaluation must not die on one file): ``joindet.priors.generation.run_over_images`` serves its
    images as an iterable dataset, from which ``MapDataset`` drops the None; Detectron2's test loader over a
    list maps a random other image in its place instead. Other errors (e.g. malformed annotations) are
    raised with the file name.

    Args (beyond ``DatasetMapper``'s):
        dataset_names: the datasets mapped, named in logs and errors (from_config: ``DATASETS.TRAIN`` when
            training; none at test time, where one mapper serves the test sets and the refresh passes over the
            training images).
        num_images: the number of images in the dataset, if known: with it, a dataset whose every image is
            unusable stops with that error even when it is smaller than ``SkippedImages``' limit.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, dataset_names=(), num_images=None, **kwargs):
        super().__init__(is_train, **kwargs)
        label = f"{type(self).__name__} ({'train' if is_train else 'test'})"
        if dataset_names:
            label += f" on {describe_datasets(dataset_names)}"
        self.skipped = SkippedImages(label, dataset_size=num_images)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, num_images=None):
        args = super().from_config(cfg, is_train)
        args["dataset_names"] = tuple(cfg.DATASETS.TRAIN) if is_train else ()
        args["num_images"] = num_images
        return args

    def __call__(self, dataset_dict):
        """Returns the mapped dict (``image`` (3, H, W) uint8, ``instances`` when training), or None for an
        unusable image."""
        d = copy.deepcopy(dataset_dict)
        expected = (d["height"], d["width"]) if "height" in d and "width" in d else None
        try:
            image = read_image(d["file_name"], format=self.image_format, expected_size=expected)
        except UnusableImage as e:
            self.skipped.skip(e)
            return None
        try:
            d.setdefault("height", image.shape[0])
            d.setdefault("width", image.shape[1])
            aug_input = T.AugInput(image)
            transforms = self.augmentations(aug_input)
            image = aug_input.image
            d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            if not self.is_train:
                d.pop("annotations", None)
            elif "annotations" in d:
                self._transform_annotations(d, transforms, image.shape[:2])
        except Exception as e:  # re-raised with the file name; the original stays as __cause__
            raise RuntimeError(
                f"Cannot map image {d.get('file_name')!r} (image_id {d.get('image_id')}): {type(e).__name__}: {e}"
            ) from e
        self.skipped.used_one()
        return d
