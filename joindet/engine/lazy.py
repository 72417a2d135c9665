"""The LazyConfig (``.py`` config) route of ``train_net.py``.

A LazyConfig holds ``model``, ``optimizer`` (its ``params.model`` is filled in here), ``lr_multiplier``
(an fvcore ``ParamScheduler``), ``dataloader.train`` / ``dataloader.test`` / ``dataloader.evaluator``,
optionally ``dataloader.synthetic`` / ``dataloader.clutter`` (settings of the two built-in generated sets) and
``dataloader.image_folders`` (unlabelled image folders, ``{name: folder}``), all registered before anything is
instantiated, and ``train`` (see ``projects/JoinDet/configs/common/train.py``; ``train.epochs`` and
``train.prior_period_epochs`` are resolved to iterations from the training set's size after the overrides,
as the yacs route resolves ``SOLVER.EPOCHS`` and ``JOINDET.UPDATE_PERIOD``). The train loader reads a
``ResumableTrainingSampler`` stream, so ``--resume`` continues exactly where the interrupted run stopped.
Training runs Detectron2's ``SimpleTrainer`` (``AMPTrainer`` with ``train.amp.enabled``) with its
standard hooks; overrides are ``key=value`` (e.g. ``train.max_iter=10``).

JoinDet pretraining: a config with ``active_priors`` (an ``L(ActivePriors)``: the prior bank folder), a
``prior_hook`` (an ``L(PriorRefreshHook)`` with its version-0 source, refresh generator, Box Smooth settings
and period, see ``projects/JoinDet/configs/common/data/pretrain_priors.py``) and a JoinDet model -- the
components the yacs route builds from ``JOINDET.*`` with their ``from_config``. ``active_priors`` is
instantiated once and given to ``dataloader.train.mapper`` (a ``JoinDetDatasetMapper``) and to the hook, which
also shares the loader's dataset dicts; ``dataloader.prior_mapper`` is the test-time mapper of prior
generation. The run adds the hook before the checkpointer, and a fresh run copies the loaded backbone into the
frozen embedding encoder -- the same pieces as ``joindet.engine.pretrain.JoinDetTrainer``.
"""
import logging
import re

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from ..checkpoint import JoinDetCheckpointer
from ..data.datasets import check_dataset_names, register_joindet_datasets
from ..modeling.joindet import JoinDet
from ..priors.active import ActivePriors
from .common import (
    build_resumable_sampler,
    check_batch_norm_batch,
    create_ddp_model_any_device,
    epochs_to_iters,
    fault_tolerance_hooks,
    insert_prior_hook,
    iters_per_epoch,
    skip_consumed,
    unwrap_model,
)
from .prior_hook import PriorRefreshHook

__all__ = [
    "lazy_setup",
    "register_lazy_datasets",
    "resolve_lazy_epochs",
    "build_lazy_train_loader",
    "build_lazy_model",
    "check_aux_loss_weights",
    "check_pretraining_config",
    "instantiate_with",
    "build_lazy_pretraining",
    "do_test",
    "do_train",
    "lazy_main",
]

logger = logging.getLogger("joindet")

_TRAIN_KEYS = ("model", "optimizer", "lr_multiplier", "dataloader", "train")
_EVAL_KEYS = ("model", "dataloader", "train")
_GENERATED_KEYS = ("root", "num_train", "num_val", "image_size", "seed")
# Per-layer loss names that build_weight_dict derives from the decoder depth: loss_ce_0, loss_giou_enc, ...
_PER_LAYER_LOSS = re.compile(r"^loss_(ce|bbox|giou)_(\d+|enc)$")


def _require(cfg, keys, where):
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"The LazyConfig {where} has no {missing} (needed by joindet.engine.lazy)")


def lazy_setup(args):
    """Load ``args.config_file``, apply ``args.opts`` (``key=value``), check the top-level keys, register
    the datasets and resolve the epoch schedule (as the yacs route does, after the overrides), then run
    Detectron2's ``default_setup`` (logging, ``train.output_dir``, config dump, seed). Returns the config (an
    omegaconf ``DictConfig``)."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    _require(cfg, _EVAL_KEYS if args.eval_only else _TRAIN_KEYS, args.config_file)
    register_lazy_datasets(cfg)
    if not args.eval_only:
        resolve_lazy_epochs(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="joindet")
    if "prior_hook" in cfg and not args.eval_only:
        check_pretraining_config(cfg)
    return cfg


def register_lazy_datasets(cfg):
    """Register the datasets of a LazyConfig with the function the yacs route uses
    (``joindet.data.datasets.register_joindet_datasets``): ``synth_*`` and ``clutter_*`` from
    ``cfg.dataloader.synthetic`` / ``cfg.dataloader.clutter`` (``root`` ("" = the default cache),
    ``num_train``, ``num_val``, ``image_size``, ``seed``; a key or section left out takes the default), the
    image folders of ``cfg.dataloader.image_folders`` (``{name: folder}``) and the low-data / VOC-as-COCO sets;
    then raise ``ValueError`` naming the config key when ``dataloader.{train,test}.dataset.names`` lists an
    unregistered dataset."""
    dataloader = cfg.dataloader
    generated = {}
    for key in ("synthetic", "clutter"):
        if key in dataloader:
            s = dataloader[key]
            unknown = sorted(set(s) - set(_GENERATED_KEYS))
            if unknown:
                raise ValueError(f"dataloader.{key} has unknown keys {unknown}; known: {list(_GENERATED_KEYS)}")
            generated[key] = {k: s[k] for k in s}
    folders = dataloader.get("image_folders") or {}
    register_joindet_datasets(**generated, image_folders=[(str(name), str(folders[name])) for name in folders])
    for split in ("train", "test"):
        loader = dataloader.get(split)
        dataset = loader.get("dataset") if loader is not None else None
        if dataset is not None and "names" in dataset:
            names = dataset.names
            check_dataset_names([names] if isinstance(names, str) else list(names), f"dataloader.{split}.dataset.names")


def _train_dataset_names(cfg):
    names = cfg.dataloader.train.dataset.names
    return [names] if isinstance(names, str) else list(names)


def resolve_lazy_epochs(cfg):
    """Epochs to iterations for a LazyConfig (in place, after the overrides): with ``train.epochs`` > 0,
    ``train.max_iter`` = that many epochs; with ``train.prior_period_epochs`` > 0 and ``prior_hook.period`` 0,
    the refresh period = that many epochs. One epoch is ``ceil(images / dataloader.train.total_batch_size)``
    iterations over the images of ``dataloader.train.dataset.names`` (``joindet.engine.common``, the arithmetic
    of the yacs route's ``resolve_epochs``). The lr schedule of the configs is relative to ``train.max_iter``
    (``common/schedule.py``), so it follows. Returns the iterations per epoch, or None when nothing is in
    epochs."""
    train = cfg.train
    epochs = train.get("epochs", 0) or 0
    period_epochs = train.get("prior_period_epochs", 0) or 0
    resolve_period = period_epochs > 0 and "prior_hook" in cfg and not cfg.prior_hook.get("period", 0)
    if epochs <= 0 and not resolve_period:
        return None
    num_images = sum(len(DatasetCatalog.get(name)) for name in _train_dataset_names(cfg))
    per_epoch = iters_per_epoch(num_images, cfg.dataloader.train.total_batch_size)
    if epochs > 0:
        train.max_iter = epochs_to_iters(epochs, per_epoch)
    if resolve_period:
        cfg.prior_hook.period = epochs_to_iters(period_epochs, per_epoch)
    return per_epoch


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


def _target_class(node):
    target = node.get("_target_") if hasattr(node, "get") else None
    return locate(target) if isinstance(target, str) else target


def check_pretraining_config(cfg):
    """Raise ``ValueError`` naming the key when a pretraining config (one with ``prior_hook``) lacks a piece:
    ``prior_hook`` must be an ``L(PriorRefreshHook)``, and ``active_priors`` (an ``L(ActivePriors)``) and
    ``dataloader.prior_mapper`` must be there. The components check their own arguments when instantiated."""
    where = "see projects/JoinDet/configs/common/data/pretrain_priors.py"
    target = _target_class(cfg.prior_hook)
    if not (isinstance(target, type) and issubclass(target, PriorRefreshHook)):
        raise ValueError(f"prior_hook must be an L(PriorRefreshHook)(...), got target {target!r} ({where})")
    if "active_priors" not in cfg:
        raise ValueError(f"A JoinDet pretraining config needs active_priors, the prior bank folder ({where})")
    target = _target_class(cfg.active_priors)
    if not (isinstance(target, type) and issubclass(target, ActivePriors)):
        raise ValueError(f"active_priors must be an L(ActivePriors)(...), got target {target!r} ({where})")
    if "prior_mapper" not in cfg.dataloader:
        raise ValueError("A JoinDet pretraining config needs dataloader.prior_mapper (the test-time mapper of "
                         "prior generation, see projects/JoinDet/configs/common/data/pretrain_coco.py)")


def instantiate_with(node, **objects):
    """Instantiate the LazyCall ``node`` with ``objects`` as arguments, in place of (or besides) the
    node's own: objects that a config should not hold (the shared ``ActivePriors``) or that are built
    once and shared (the dataset dicts the loader and the prior hook both read)."""
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_" and k not in objects}
    target = node["_target_"]
    if isinstance(target, str):
        target = locate(target)
    return target(**kwargs, **objects)


def build_lazy_pretraining(cfg):
    """The data side of a JoinDet pretraining run (``cfg`` passed :func:`check_pretraining_config`).

    Returns (train loader, its sampler, PriorRefreshHook): ``cfg.active_priors``, instantiated once, goes to
    ``dataloader.train.mapper`` (a ``JoinDetDatasetMapper``) and to ``cfg.prior_hook``, which also shares the
    loader's dataset dicts and is named after its datasets (part of the version-0 cache key)."""
    active_priors = instantiate(cfg.active_priors)
    loader_cfg = cfg.dataloader.train
    dataset_dicts = instantiate(loader_cfg.dataset)
    mapper = instantiate_with(loader_cfg.mapper, active_priors=active_priors)
    train_loader, sampler = build_lazy_train_loader(cfg, dataset_dicts, mapper)
    refresh = instantiate_with(cfg.prior_hook, active_priors=active_priors, dataset_dicts=dataset_dicts,
                               dataset_name="+".join(_train_dataset_names(cfg)))
    return train_loader, sampler, refresh


def build_lazy_train_loader(cfg, dataset=None, mapper=None):
    """``cfg.dataloader.train`` instantiated (its ``dataset`` and ``mapper`` unless given), reading a
    :class:`ResumableTrainingSampler` stream with one seed shared by every rank for the stream and the loader
    (``joindet.engine.common.build_resumable_sampler``, as the yacs route) unless the config names its own
    ``sampler``. Returns (loader, sampler: None for a sampler of the config's, which a resumed run restarts)."""
    loader_cfg = cfg.dataloader.train
    if dataset is None:
        dataset = instantiate(loader_cfg.dataset)
    if mapper is None:
        mapper = instantiate(loader_cfg.mapper)
    if loader_cfg.get("sampler") is not None:
        return instantiate_with(loader_cfg, dataset=dataset, mapper=mapper), None
    sampler, seed = build_resumable_sampler(len(dataset))
    return instantiate_with(loader_cfg, dataset=dataset, mapper=mapper, sampler=sampler, seed=seed), sampler


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
    Pretraining (a ``prior_hook`` and a JoinDet model) adds the prior refresh hook before the
    checkpointer and, on a fresh run, copies the loaded backbone into the frozen embedding encoder.
    Returns the results of the last evaluation."""
    if cfg.train.amp.enabled and torch.device(cfg.train.device).type != "cuda":
        raise ValueError(f"train.amp.enabled needs a CUDA device, but train.device is {cfg.train.device!r}")
    pretraining = "prior_hook" in cfg
    model_class = _target_class(cfg.model)
    # checked before anything is built
    if pretraining != (isinstance(model_class, type) and issubclass(model_class, JoinDet)):
        raise ValueError(
            f"The model is a {getattr(model_class, '__name__', model_class)} and the config "
            f"{'has a' if pretraining else 'has no'} prior_hook: JoinDet pretraining needs both a JoinDet model "
            "(common/models/joindet.py) and the prior components (common/data/pretrain_priors.py); a supervised "
            "config has neither")
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    if pretraining:
        train_loader, sampler, refresh = build_lazy_pretraining(cfg)
    else:
        (train_loader, sampler), refresh = build_lazy_train_loader(cfg), None

    model = create_ddp_model_any_device(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    check_batch_norm_batch(unwrap_model(model), cfg.dataloader.train.total_batch_size, comm.get_world_size(),
                           batch_key="dataloader.train.total_batch_size", norm_key="model.backbone.stages.norm")
    checkpointer = JoinDetCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results = {}

    def test_and_keep():
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    main_process = comm.is_main_process()
    hook_list = [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if main_process
        else None,
    ]
    if refresh is not None:
        insert_prior_hook(hook_list, refresh)
    # last, as in the yacs trainer: the random generators go into checkpoints, SIGTERM saves one and stops
    hook_list += fault_tolerance_hooks(checkpointer)
    trainer.register_hooks(hook_list)

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    resumed = args.resume and checkpointer.has_checkpoint()
    if pretraining and not resumed:
        # a fresh run: the frozen embedding encoder starts from the backbone's (loaded) weights
        unwrap_model(model).sync_embed_encoder()
    # A checkpoint stores the iteration that had just finished: a resumed run starts at the next one.
    start_iter = trainer.iter + 1 if resumed else 0
    # the images of iterations 0 .. start_iter - 1 were read before the interruption
    skip_consumed(sampler, start_iter, cfg.dataloader.train.total_batch_size)
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
