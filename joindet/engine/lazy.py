"""The LazyConfig (``.py`` config) route of ``train_net.py``.

A LazyConfig holds ``model``, ``optimizer`` (its ``params.model`` is filled in here), ``lr_multiplier``
(an fvcore ``ParamScheduler``), ``dataloader.train`` / ``dataloader.test`` / ``dataloader.evaluator``,
optionally ``dataloader.synthetic`` (settings of the built-in synthetic set, registered before
anything is instantiated), and ``train`` (see ``projects/JoinDet/configs/common/train.py``).
Training runs Detectron2's ``SimpleTrainer`` (``AMPTrainer`` with ``train.amp.enabled``) with its
standard hooks; overrides are ``key=value`` (e.g. ``train.max_iter=10``).

JoinDet pretraining: a config with a ``joindet`` section (the prior settings, ``JOINDET.*`` of the
yacs route one to one, see ``projects/JoinDet/configs/common/data/pretrain_priors.py``) and a JoinDet
model. Its ``dataloader.train.mapper`` is a ``JoinDetDatasetMapper`` built here with the run's
``ActivePriors`` (bank ``joindet.priors.bank_dir``, "" = ``train.output_dir/prior_bank``), and
``dataloader.prior_mapper`` is the test-time mapper of prior generation. The run adds the
``PriorRefreshHook`` (version 0 from ``joindet.priors.init_source`` built with
``joindet.init_source_kwargs[init_source]``, refreshes every ``joindet.update_period_iters``) before the
checkpointer, and a fresh run copies the loaded backbone into the frozen embedding encoder -- the
same pieces as ``joindet.engine.pretrain.JoinDetTrainer``.
"""
import inspect
import logging
import re

import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..checkpoint import JoinDetCheckpointer
from ..config import add_joindet_config, check_config_value
from ..data.datasets import check_dataset_names
from ..data.synthetic import register_synthetic
from ..data.transfer import register_transfer_datasets
from ..modeling.joindet import JoinDet
from ..priors.active import ActivePriors
from ..priors.sources import PRIOR_SOURCE_REGISTRY, build_prior_source
from .fault_tolerance import PreemptionHook, RNGStateHook
from .pretrain import build_prior_refresh_hook, insert_prior_hook, prior_settings_from_cfg, resolve_bank_dir
from .trainer import check_batch_norm_batch, create_ddp_model_any_device, unwrap_model

__all__ = [
    "lazy_setup",
    "register_lazy_datasets",
    "build_lazy_model",
    "check_aux_loss_weights",
    "check_joindet_section",
    "instantiate_with",
    "build_lazy_prior_source",
    "build_lazy_pretraining",
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
    if "joindet" in cfg and not args.eval_only:
        check_joindet_section(cfg)
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
        # a key left out takes register_synthetic's default (joindet.data.synthetic.GENERATED_SET_DEFAULTS)
        register_synthetic(name_prefix="synth", root=s.get("root") or None, **{k: s[k] for k in s if k != "root"})
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


def _joindet_layout():
    """The keys of a ``joindet`` section: those of ``prior_settings_from_cfg`` on the yacs defaults
    (``JOINDET.PRIORS`` / ``NCUT`` / ``SMOOTH`` / ``REFRESH`` with lower-case keys, ``update_period_iters``) plus
    ``init_source_kwargs``. Returns {key: set of sub-keys, or None for a value or free-form mapping}."""
    defaults = prior_settings_from_cfg(add_joindet_config(get_cfg()))
    layout = {k: set(v) if isinstance(v, dict) else None for k, v in defaults.items()}
    layout["init_source_kwargs"] = None
    return layout


def check_joindet_section(cfg):
    """Raise ``ValueError`` naming the key when ``cfg.joindet`` lacks a key of the yacs ``JOINDET``
    prior settings or has an unknown one, a value breaks the rule of its yacs twin in
    ``joindet.config.CONFIG_RULES`` (``joindet.ncut.tau`` that of ``JOINDET.NCUT.TAU``: type, range, and
    for ``priors.init_source`` / ``refresh.generator`` the registry), ``priors.init_source`` has no
    ``init_source_kwargs`` entry, ``priors.eval_dataset`` is not a registered dataset, or the config has
    no ``dataloader.prior_mapper``."""
    section = cfg.joindet
    layout = _joindet_layout()
    unknown = sorted(set(section) - set(layout))
    missing = sorted(set(layout) - set(section))
    if unknown or missing:
        raise ValueError(f"joindet must have the keys {sorted(layout)}: missing {missing}, unknown {unknown} "
                         f"(see projects/JoinDet/configs/common/data/pretrain_priors.py)")
    for group, keys in layout.items():
        if keys is not None and set(section[group]) != keys:
            have = set(section[group])
            raise ValueError(f"joindet.{group} must have the keys {sorted(keys)} (JOINDET.{group.upper()}.* in "
                             f"lower case): missing {sorted(keys - have)}, unknown {sorted(have - keys)}")
    for group, keys in layout.items():
        if group == "init_source_kwargs":  # free-form: each source checks its own arguments
            continue
        for key in [group] if keys is None else [f"{group}.{k}" for k in sorted(keys)]:
            check_config_value(f"JOINDET.{key.upper()}", OmegaConf.select(section, key), shown_as=f"joindet.{key}")
    name = section.priors.init_source
    if name not in section.init_source_kwargs:
        raise ValueError(f"joindet.init_source_kwargs has no entry for the init source {name!r} "
                         f"(it has {sorted(section.init_source_kwargs)})")
    if section.priors.eval_dataset:
        check_dataset_names([section.priors.eval_dataset], "joindet.priors.eval_dataset")
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


def build_lazy_prior_source(section, mapper):
    """The version-0 prior source: ``build_prior_source(section.priors.init_source,
    **section.init_source_kwargs[init_source])``, plus ``mapper`` (the test-time mapper) for a source
    that takes one (``ncut_backbone`` runs the model on the images)."""
    name = section.priors.init_source
    kwargs = OmegaConf.to_container(section.init_source_kwargs[name], resolve=True)
    if "mapper" in inspect.signature(PRIOR_SOURCE_REGISTRY.get(name)).parameters:
        kwargs["mapper"] = mapper
    return build_prior_source(name, **kwargs)


def build_lazy_pretraining(cfg):
    """The data side of a JoinDet pretraining run (``cfg`` has a checked ``joindet`` section).

    Returns (train loader, PriorRefreshHook): one ``ActivePriors`` of the bank folder goes to
    ``dataloader.train.mapper`` (a ``JoinDetDatasetMapper``) and to the hook, which also shares the
    loader's dataset dicts and reads images with ``dataloader.prior_mapper``."""
    section = cfg.joindet
    active_priors = ActivePriors(resolve_bank_dir(section.priors.bank_dir, cfg.train.output_dir))
    loader_cfg = cfg.dataloader.train
    names = loader_cfg.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    dataset_dicts = instantiate(loader_cfg.dataset)
    mapper = instantiate_with(loader_cfg.mapper, active_priors=active_priors)
    train_loader = instantiate_with(loader_cfg, dataset=dataset_dicts, mapper=mapper)
    prior_mapper = instantiate(cfg.dataloader.prior_mapper)
    refresh = build_prior_refresh_hook(
        active_priors=active_priors,
        dataset_dicts=dataset_dicts,
        dataset_name="+".join(names),
        init_source=build_lazy_prior_source(section, prior_mapper),
        mapper=prior_mapper,
        settings=section,
    )
    return train_loader, refresh


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
    Pretraining (a ``joindet`` section and a JoinDet model) adds the prior refresh hook before the
    checkpointer and, on a fresh run, copies the loaded backbone into the frozen embedding encoder.
    Returns the results of the last evaluation."""
    if cfg.train.amp.enabled and torch.device(cfg.train.device).type != "cuda":
        raise ValueError(f"train.amp.enabled needs a CUDA device, but train.device is {cfg.train.device!r}")
    pretraining = "joindet" in cfg
    target = cfg.model._target_
    model_class = locate(target) if isinstance(target, str) else target
    # checked before the model is built: the JoinDet model reads joindet.priors.* by interpolation
    if pretraining != (isinstance(model_class, type) and issubclass(model_class, JoinDet)):
        raise ValueError(
            f"The model is a {getattr(model_class, '__name__', model_class)} and the config "
            f"{'has a' if pretraining else 'has no'} joindet section: JoinDet pretraining needs both a JoinDet model "
            "(common/models/joindet.py) and the prior settings (common/data/pretrain_priors.py); a supervised "
            "config has neither")
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    if pretraining:
        train_loader, refresh = build_lazy_pretraining(cfg)
    else:
        train_loader, refresh = instantiate(cfg.dataloader.train), None

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
    hook_list += [RNGStateHook(), PreemptionHook(checkpointer)]
    trainer.register_hooks(hook_list)

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    resumed = args.resume and checkpointer.has_checkpoint()
    if pretraining and not resumed:
        # a fresh run: the frozen embedding encoder starts from the backbone's (loaded) weights
        unwrap_model(model).sync_embed_encoder()
    # A checkpoint stores the iteration that had just finished: a resumed run starts at the next one.
    start_iter = trainer.iter + 1 if resumed else 0
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
