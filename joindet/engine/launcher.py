"""What ``train_net.py`` runs in every process: config set-up, then training or evaluation."""
import logging
import os

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_joindet_config, resolve_epochs, validate_config
from ..data.datasets import check_dataset_names, register_datasets
from ..model_zoo import resolve_config_file
from ..utils.atomic import write_json_atomic
from .fault_tolerance import TrainingPreempted
from .pretrain import JoinDetTrainer
from .trainer import Trainer, build_checkpointer

__all__ = ["setup", "main", "cli", "trainer_class", "write_results"]

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


def write_results(output_dir, results):
    """Save evaluation results as OUTPUT_DIR/eval_results.json (atomically), for scripts to read."""
    return write_json_atomic(os.path.join(output_dir, "eval_results.json"), results, indent=2, default=float)


def main(args):
    """Train (or with ``--eval-only`` evaluate) in this process; returns the evaluation results
    (a dict dataset -> task -> metric; empty when DATASETS.TEST is empty), also written to
    OUTPUT_DIR/eval_results.json by the main process. ``args.config_file`` may name a packaged config,
    ``joindet://<name>`` (``joindet.model_zoo``)."""
    args.config_file = resolve_config_file(args.config_file)
    try:
        if args.config_file.endswith(".py"):
            from .lazy import lazy_main

            results = lazy_main(args)
        else:
            results = _yacs_main(args)
    except TrainingPreempted as e:  # SIGTERM: a checkpoint was saved; a clean exit for the scheduler
        logger.warning("Training stopped on SIGTERM after iteration %d; %s holds its state. Continue with "
                       "the same command and --resume.", e.iteration, e.checkpoint)
        results = {}
    _close_process_group()  # not after an error: other ranks may still be inside a collective
    return results


def _close_process_group():
    """End this process's process groups, and their gloo worker threads, before the interpreter exits.

    ``destroy_process_group`` drops torch's references to the groups, but Detectron2 keeps two more: its
    local (per-machine) group and the cached group of ``comm.all_gather``. A group kept alive past
    ``main`` lets its gloo worker threads outlive the interpreter: a worker that frees the last
    collective's work object during interpreter finalization needs the GIL, is made to exit, and the
    rank dies with "terminate called without an active exception" (SIGABRT; seen intermittently on the
    2-process runs). Releasing those references and collecting garbage here runs the groups'
    destructors, which join their worker threads while Python is still alive."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None  # Detectron2's per-machine group ...
    comm.create_local_process_group.cache_clear()  # ... and its creator's memo, so a later launch makes one
    comm._get_global_gloo_group.cache_clear()  # returns (and caches) the WORLD group on gloo
    gc.collect()  # groups held by reference cycles (a DDP model inside a finished trainer)


def _yacs_main(args):
    """``main`` for a yacs (.yaml) config."""
    cfg = setup(args)
    if args.eval_only:
        model = trainer_class(cfg).build_model(cfg)
        build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_class(cfg).test(cfg, model)
    else:
        trainer = trainer_class(cfg)(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", {})  # set by DefaultTrainer's final evaluation
    if comm.is_main_process():
        logger.info("Evaluation results: %s", results)
        write_results(cfg.OUTPUT_DIR, results)
    return results


def cli(argv=None):
    """``train_net.py``'s and ``joindet-train``'s command line: Detectron2's argument parser, then one process
    per device. ``--config-file`` takes a path or a packaged config's name, ``joindet://<name>``
    (``joindet.model_zoo.list_configs()``)."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    try:  # a wrong path or name fails here, before any process starts
        args.config_file = resolve_config_file(args.config_file)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
