"""Dataset registration: the built-in generated sets (shapes, clutter), unlabelled image folders and the
low-data / VOC-as-COCO sets, by one function both config routes call (:func:`register_joindet_datasets`:
``register_datasets`` for a yacs config, ``joindet.engine.lazy.register_lazy_datasets`` for a LazyConfig),
plus a clear error for unknown names."""
from detectron2.data import DatasetCatalog

from .clutter import register_clutter
from .image_folder import register_image_folder
from .synthetic import register_synthetic
from .transfer import register_transfer_datasets

__all__ = ["register_joindet_datasets", "register_datasets", "check_dataset_names"]


def register_joindet_datasets(*, synthetic=None, clutter=None, image_folders=(), transfer_dir=None):
    """Register the synthetic shapes set (``synth_*``) and the clutter set (``clutter_*``) with the settings
    in ``synthetic`` / ``clutter`` (mappings of ``root`` ("" or None = the default cache), ``num_train``,
    ``num_val``, ``image_size``, ``seed``; a key left out, or None for the whole set, takes the default of
    ``joindet.data.generated.GENERATED_SET_DEFAULTS``), both generated on first load; the unlabelled image
    folders ``image_folders`` (``(name, folder)`` pairs); then the seeded low-data subsets (COCO, synthetic and
    clutter 1% / 10%) and VOC 2007 test as a COCO-format set (``voc_2007_test_coco``) with their files under
    ``transfer_dir`` ("" or None = ``$JOINDET_CACHE/transfer``)."""
    for register, prefix, settings in ((register_synthetic, "synth", synthetic), (register_clutter, "clutter", clutter)):
        settings = dict(settings or {})
        root = settings.pop("root", None) or None
        register(name_prefix=prefix, root=root, **settings)
    for name, folder in image_folders:
        register_image_folder(name, folder)
    # after the generated sets: their low-data subsets follow their current settings
    register_transfer_datasets(low_data_dir=transfer_dir or None, voc_json_dir=transfer_dir or None)


def register_datasets(cfg):
    """Register the datasets that depend on config values: the synthetic shapes set (``synth_*``, from
    ``DATASETS.SYNTHETIC``) and the clutter set (``clutter_*``, from ``DATASETS.CLUTTER``), both generated
    on first load; the unlabelled image folders of ``DATASETS.IMAGE_FOLDERS``; the seeded low-data
    subsets (COCO, synthetic and clutter 1% / 10%) and VOC 2007 test as a COCO-format set
    (``voc_2007_test_coco``).

    Detectron2's own built-ins (COCO, VOC, ... under ``$DETECTRON2_DATASETS``) are registered when
    ``detectron2.data`` is imported.
    """
    generated = {name: {"root": c.ROOT, "num_train": c.NUM_TRAIN, "num_val": c.NUM_VAL, "image_size": c.IMAGE_SIZE,
                        "seed": c.SEED} for name, c in (("synthetic", cfg.DATASETS.SYNTHETIC),
                                                        ("clutter", cfg.DATASETS.CLUTTER))}
    folders = [tuple(part.strip() for part in entry.split("=", 1)) for entry in cfg.DATASETS.IMAGE_FOLDERS]
    register_joindet_datasets(**generated, image_folders=folders, transfer_dir=cfg.DATASETS.TRANSFER_DIR)


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
