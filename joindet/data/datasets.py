"""Dataset registration from the config: the built-in synthetic set, plus a clear error for unknown names."""
from detectron2.data import DatasetCatalog

from .synthetic import register_synthetic

__all__ = ["register_datasets", "check_dataset_names"]


def register_datasets(cfg):
    """Register the datasets that depend on config values (the synthetic set's size and seed).

    Detectron2's own built-ins (COCO, VOC, ... under ``$DETECTRON2_DATASETS``) are registered when
    ``detectron2.data`` is imported.
    """
    s = cfg.DATASETS.SYNTHETIC
    register_synthetic(
        name_prefix="synth",
        root=s.ROOT or None,
        num_train=s.NUM_TRAIN,
        num_val=s.NUM_VAL,
        image_size=s.IMAGE_SIZE,
        seed=s.SEED,
    )


def check_dataset_names(names, key):
    """Raise ``ValueError`` naming the config key when a dataset name is not registered."""
    registered = set(DatasetCatalog.list())
    unknown = [n for n in names if n not in registered]
    if unknown:
        joindet_names = sorted(n for n in registered if n.startswith("synth"))
        raise ValueError(
            f"Unknown dataset name(s) {unknown} in {key}. Built-in JoinDet datasets: {joindet_names}; "
            f"Detectron2's built-ins include coco_2017_train, coco_2017_val, voc_2007_trainval, voc_2012_trainval, "
            f"voc_2007_test (expected under $DETECTRON2_DATASETS); register your own with "
            f"detectron2.data.datasets.register_coco_instances."
        )
