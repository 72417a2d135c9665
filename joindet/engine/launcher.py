"""What ``train_net.py`` runs in every process: config set-up, then training or evaluation."""
import logging

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_joindet_config, resolve_epochs, validate_config
from ..data.datasets import check_dataset_names, register_datasets
from .pretrain import JoinDetTrainer
from .trainer import Trainer, build_checkpointer

__all__ = ["setup", "main", "trainer_class"]

logger = logging.getLogger("joindet")


def setup(args):
    """yacs config from ``args.config_file`` + ``args.opts``, validated, datasets registered,
    epoch schedules resolved, then Detectron2's ``default_setup`` (logging, output dir, seed)."""
    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_config(cfg)
    register_datasets(cfg)
    check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_dataset_names(cfg.DATASETS.TEST, "DATASETS.TEST")
    if not args.eval_only:
        num_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
        resolve_epochs(cfg, num_images)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="joindet", abbrev_name="joindet")
    return cfg


def trainer_class(cfg):
    """JoinDetTrainer for pretraining (the JoinDet meta-architecture), else the supervised Trainer."""
    return JoinDetTrainer if cfg.MODEL.META_ARCHITECTURE == "JoinDet" else Trainer


def main(args):
    if args.config_file.endswith(".py"):
        from .lazy import lazy_main

        return lazy_main(args)
    cfg = setup(args)
    if args.eval_only:
        model = trainer_class(cfg).build_model(cfg)
        build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_class(cfg).test(cfg, model)
        if comm.is_main_process():
            logger.info("Evaluation results: %s", results)
        return results
    trainer = trainer_class(cfg)(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
