"""Dataset mapper for supervised Deformable DETR training and evaluation."""
from detectron2.data import DatasetMapper

__all__ = ["DetrDatasetMapper"]


class DetrDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` (augmentations from ``INPUT.*``: multi-scale resize, flip, crop)
    whose errors name the image that caused them (e.g. a file that cannot be decoded)."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:  # re-raised with the file name; the original stays as __cause__
            raise RuntimeError(
                f"Cannot load image {dataset_dict.get('file_name')!r} "
                f"(image_id {dataset_dict.get('image_id')}): {type(e).__name__}: {e}"
            ) from e
