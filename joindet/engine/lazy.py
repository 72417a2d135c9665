"""The LazyConfig (``.py`` config) route of ``train_net.py``.

A LazyConfig holds ``model``, ``optimizer`` (its ``params.model`` is filled in here), ``lr_multiplier``
(an fvcore ``ParamScheduler``), ``dataloader.train`` / ``dataloader.test`` / ``dataloader.evaluator``,
optionally ``dataloader.synthetic`` (settings of the built-in synthetic set, registered before
anything is instantiated), and ``train`` (see ``projects/JoinDet/configs/common/train.py``).
Training runs Detectron2's ``SimpleTrainer`` (``AMPTrainer`` with ``train.amp.enabled``) with its
standard hooks; overrides are ``key=value`` (e.g. ``train.max_iter=10``).
"""
import logging
import re

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import JoinDetCheckpointer
from ..data.datasets import check_dataset_names
from ..data.synthetic import register_synthetic
from ..data.transfer import register_transfer_datasets
from .trainer import create_ddp_model_any_device

__all__ = [
    "lazy_setup",
    "register_lazy_datasets",
    "build_lazy_model",
    "check_aux_loss_weights",
    "do_test",
    "do_train",
    "lazy_main",
]

logger = logging.getLogger("joindet")

_TRAIN_KEYS = ("model", "optimizer", "lr_multiplier", "dataloader", "train")
_EVAL_KEYS = ("model", "dataloader", "train")
_SYNTHETIC_KEYS = ("root", "num_train", "num_val", "image_size", "seed")
# Per-layer loss names that build_weight_dict derives from the decoder depth: loss_ce_0, loss_giou_enc, ...
_PER_LAYER_LOSS = re.compile(r"^loss_(ce|bbox|giou)_(\d+|enc)$")


def _require(cfg, keys, where):
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"The LazyConfig {where} has no {missing} (needed by joindet.engine.lazy)")


def lazy_setup(args):
    """Load ``args.config_file``, apply ``args.opts`` (``key=value``), check the top-level keys, run
    Detectron2's ``default_setup`` (logging, ``train.output_dir``, config dump, seed) and register
    the synthetic datasets. Returns the config (an omegaconf ``DictConfig``)."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    _require(cfg, _EVAL_KEYS if args.eval_only else _TRAIN_KEYS, args.config_file)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="joindet")
    register_lazy_datasets(cfg)
    return cfg


def register_lazy_datasets(cfg):
    """Register ``synth_*`` from ``cfg.dataloader.synthetic`` (when present: ``root`` ("" = the default
    cache), ``num_train``, ``num_val``, ``image_size``, ``seed``) and the low-data / VOC-as-COCO sets, then raise ``ValueError`` naming the
    config key when ``dataloader.{train,test}.dataset.names`` lists an unregistered dataset."""
    dataloader = cfg.dataloader
    if "synthetic" in dataloader:
        s = dataloader.synthetic
        unknown = sorted(set(s) - set(_SYNTHETIC_KEYS))
        if unknown:
            raise ValueError(f"dataloader.synthetic has unknown keys {unknown}; known: {list(_SYNTHETIC_KEYS)}")
        register_synthetic(
            name_prefix="synth",
            root=s.get("root") or None,
            num_train=s.get("num_train", 400),
            num_val=s.get("num_val", 100),
            image_size=s.get("image_size", 256),
            seed=s.get("seed", 0),
        )
    register_transfer_datasets()  # low-data subsets (after synth_*) and VOC-as-COCO
    for split in ("train", "test"):
        loader = dataloader.get(split)
        dataset = loader.get("dataset") if loader is not None else None
        if dataset is not None and "names" in dataset:
            names = dataset.names
            check_dataset_names([names] if isinstance(names, str) else list(names), f"dataloader.{split}.dataset.names")


def check_aux_loss_weights(model):
    """Raise ``ValueError`` when the criterion's per-layer loss weights (``loss_ce_0`` ... and
    ``*_enc``) do not match the decoder depth, ``aux_loss`` and ``two_stage`` of a Deformable DETR
    ``model`` (a LazyConfig sets ``criterion.weight_dict.num_aux`` by hand; a mismatch would silently
    drop or ignore auxiliary losses). Models without a criterion and a transformer pass."""
    criterion = getattr(model, "criterion", None)
    transformer = getattr(model, "transformer", None)
    if criterion is None or transformer is None or not hasattr(criterion, "weight_dict"):
        return
    num_aux = transformer.decoder.num_layers - 1 if getattr(model, "aux_loss", False) else 0
    suffixes = [str(i) for i in range(num_aux)] + (["enc"] if getattr(model, "two_stage", False) else [])
    expected = {f"loss_{k}_{s}" for k in ("ce", "bbox", "giou") for s in suffixes}
    present = {k for k in criterion.weight_dict if _PER_LAYER_LOSS.match(k)}
    if present != expected:
        raise ValueError(
            f"model.criterion.weight_dict does not fit the model: {transformer.decoder.num_layers} decoder "
            f"layers with aux_loss={getattr(model, 'aux_loss', False)} need num_aux={num_aux} "
            f"(missing {sorted(expected - present)}, unexpected {sorted(present - expected)}); "
            f"set model.criterion.weight_dict.num_aux={num_aux}"
        )


def build_lazy_model(cfg):
    """Instantiate ``cfg.model``, check its loss weights, move it to ``cfg.train.device``."""
    model = instantiate(cfg.model)
    check_aux_loss_weights(model)
    model.to(torch.device(cfg.train.device))
    logger.info("Model:\n%s", model)
    return model


def do_test(cfg, model):
    """Run ``cfg.dataloader.evaluator`` over ``cfg.dataloader.test``; print (main process) and return
    the results (``{}`` when the config has no evaluator)."""
    if "evaluator" not in cfg.dataloader:
        logger.warning("The config has no dataloader.evaluator: nothing to evaluate")
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg):
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations with Detectron2's trainer and hooks
    (iteration timer, lr schedule, periodic checkpoints, evaluation every ``train.eval_period`` and at
    the end, metric writers). ``args.resume`` continues from the last checkpoint in
    ``train.output_dir``; otherwise ``train.init_checkpoint`` (if any) initialises the model.
    Returns the results of the last evaluation."""
    if cfg.train.amp.enabled and torch.device(cfg.train.device).type != "cuda":
        raise ValueError(f"train.amp.enabled needs a CUDA device, but train.device is {cfg.train.device!r}")
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model_any_device(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = JoinDetCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results = {}

    def test_and_keep():
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if main_process
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that had just finished: a resumed run starts at the next one.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)


def lazy_main(args):
    """``train_net.py``'s work for a ``.py`` config, in every process: evaluation of
    ``train.init_checkpoint`` (``--eval-only``; with ``--resume``, the last checkpoint in
    ``train.output_dir`` if there is one) or training. Returns the evaluation results."""
    cfg = lazy_setup(args)
    if args.eval_only:
        model = build_lazy_model(cfg)
        if not cfg.train.init_checkpoint and not args.resume:
            logger.warning("--eval-only without train.init_checkpoint: evaluating randomly initialised weights")
        JoinDetCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    return do_train(args, cfg)
