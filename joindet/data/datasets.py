"""Dataset registration from the config: the built-in generated sets (shapes, clutter), plus a clear error
for unknown names."""
from detectron2.data import DatasetCatalog

from .clutter import register_clutter
from .image_folder import register_image_folder
from .synthetic import register_synthetic
from .transfer import register_transfer_datasets

__all__ = ["register_datasets", "check_dataset_names"]


def register_datasets(cfg):
    """Register the datasets that depend on config values: the synthetic shapes set (``synth_*``, from
    ``DATASETS.SYNTHETIC``) and the clutter set (``clutter_*``, from ``DATASETS.CLUTTER``), both generated
    on first load; the unlabelled image folders of ``DATASETS.IMAGE_FOLDERS``; the seeded low-data
    subsets (COCO, synthetic and clutter 1% / 10%) and VOC 2007 test as a COCO-format set
    (``voc_2007_test_coco``).

    Detectron2's own built-ins (COCO, VOC, ... under ``$DETECTRON2_DATASETS``) are registered when
    ``detectron2.data`` is imported.
    """
    for register, prefix, c in ((register_synthetic, "synth", cfg.DATASETS.SYNTHETIC),
                                (register_clutter, "clutter", cfg.DATASETS.CLUTTER)):
        register(name_prefix=prefix, root=c.ROOT or None, num_train=c.NUM_TRAIN, num_val=c.NUM_VAL,
                 image_size=c.IMAGE_SIZE, seed=c.SEED)
    for entry in cfg.DATASETS.IMAGE_FOLDERS:
        name, folder = entry.split("=", 1)
        register_image_folder(name.strip(), folder.strip())
    # after the generated sets: their low-data subsets follow their current settings
    register_transfer_datasets(low_data_dir=cfg.DATASETS.TRANSFER_DIR or None,
                               voc_json_dir=cfg.DATASETS.TRANSFER_DIR or None)


def check_dataset_names(names, key):
    """Raise ``ValueError`` naming the config key when a dataset name is not registered."""
    registered = set(DatasetCatalog.list())
    unknown = [n for n in names if n not in registered]
    if unknown:
        joindet_names = sorted(n for n in registered
                               if n.startswith(("synth", "clutter")) or n.endswith(("pct", "_coco")))
        raise ValueError(
            f"Unknown dataset name(s) {unknown} in {key}. Built-in JoinDet datasets: {joindet_names}; "
            f"Detectron2's built-ins include coco_2017_train, coco_2017_val, voc_2007_trainval, voc_2012_trainval, "
            f"voc_2007_test (expected under $DETECTRON2_DATASETS); register your own with "
            f"detectron2.data.datasets.register_coco_instances."
        )
