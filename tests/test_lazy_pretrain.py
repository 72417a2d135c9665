"""JoinDet pretraining and fine-tuning through the LazyConfig route against their yacs twins.

The ``.py`` configs must build the same models (parameter names, shapes, frozen parameters), mappers,
prior components (version-0 source, refresh generator, Box Smooth settings, period) and schedules as the
``.yaml`` ones; ``train_net.py`` pretrains with
a ``.py`` config (prior bank versions 0..2, the version in use checkpointed, the embedding encoder
synced with the loaded backbone on a fresh run only), resumes with the checkpointed version, and the
mini 10% fine-tuning config starts from that checkpoint (pretraining heads dropped) and prints COCO AP.
"""
import argparse
import inspect
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import hooks
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

import joindet.modeling  # noqa: F401  (registers the meta-architectures)
from joindet.config import resolve_epochs
from joindet.data.mapper import DetrDatasetMapper
from joindet.data.pretrain_mapper import JoinDetDatasetMapper
from joindet.engine.lazy import (
    check_aux_loss_weights,
    check_pretraining_config,
    do_train,
    instantiate_with,
    lazy_main,
    register_lazy_datasets,
)
from joindet.engine.optimizer import build_optimizer
from joindet.engine.common import insert_prior_hook
from joindet.engine.pretrain import bank_dir
from joindet.modeling.joindet import JoinDet
from joindet.priors.active import ActivePriors
from joindet.priors.bank import PriorBank
from joindet.priors.box_smooth import BoxSmoothSettings
from joindet.priors.generation import generate_ncut_priors
from joindet.priors.random_crops import RandomCropSource
from joindet.priors.refresh import build_refresh_generator
from joindet.priors.sources import build_prior_source_from_cfg

from conftest import LAZY_TINY_PRIOR_HOOK_OPTS
from test_lazy_config import (
    CSV_HEADER,
    aug_signature,
    csv_values,
    lr_and_decay_by_name,
    mapper_signature,
    param_table,
    run_lazy_train_net,
    yaml_cfg,
)

REPO = Path(__file__).resolve().parents[1]
LAZY_DIR = REPO / "projects" / "JoinDet" / "configs"
YAML_DIR = REPO / "configs"
HOOK_KEY = "PriorRefreshHook"  # TrainerBase.state_dict keys hook states by the class's __qualname__

# (lazy config, yaml twin, images per epoch of the training set as the yacs launcher counts them).
PRETRAIN_PAIRS = {
    "mini": ("mini_joindet_pretrain_synth.py", "mini/pretrain_synth.yaml", 400),
    "mini_clutter": ("mini_joindet_pretrain_clutter.py", "mini/clutter/pretrain_clutter.yaml", 400),
    "r50_coco": ("joindet_pretrain_r50_coco.py", "pretrain.yaml", 118287),
}
FINETUNE_PAIRS = {
    "coco": ("finetune_coco.py", "finetune_coco.yaml", 117266),
    "coco_10pct": ("finetune_coco_10pct.py", "finetune_coco_10pct.yaml", 11829),
    "coco_1pct": ("finetune_coco_1pct.py", "finetune_coco_1pct.yaml", 1183),
    "voc": ("finetune_voc.py", "finetune_voc.yaml", 5011 + 11540),
    "mini_10pct": ("mini_finetune_synth_10pct.py", "mini/finetune_synth_10pct.yaml", 40),
}
# Iterations of every fine-tuning schedule, by hand: (iterations per epoch, max_iter, lr drop).
FINETUNE_ITERS = {
    "coco": (3665, 183250, 146600),
    "coco_10pct": (370, 148000, 103600),
    "coco_1pct": (37, 74000, 51800),
    "voc": (518, 51800, 36260),
    "mini_10pct": (5, 250, 175),
}

SYNTH_TINY = [
    "dataloader.synthetic.num_train=8",
    "dataloader.synthetic.num_val=4",
    "dataloader.synthetic.image_size=64",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "train.log_period=1",
]
# d 64, 1+1 layers, 10 queries, FFN 128 (R18 and 3 levels from the mini configs).
MODEL_TINY = [
    "model.transformer.d_model=64",
    "model.transformer.num_encoder_layers=1",
    "model.transformer.num_decoder_layers=1",
    "model.transformer.dim_feedforward=128",
    "model.criterion.weight_dict.num_aux=0",
    "model.num_queries=10",
]
# 64 px LSJ, 32 px crops, random-crop version 0 (10 per image), NCut on the stride-8 level, a refresh
# every 2 iterations: 5 iterations refresh after iterations 2 and 4 (1-based) -> versions 0, 1, 2.
PRETRAIN_TINY = [
    *SYNTH_TINY,
    *MODEL_TINY,
    "model.num_detections=10",
    "dataloader.train.mapper.augmentations.image_size=64",
    "dataloader.train.mapper.crop_size=32",
    *LAZY_TINY_PRIOR_HOOK_OPTS,
    "prior_hook.period=2",
    "train.max_iter=5",
]
FINETUNE_TINY = [
    *SYNTH_TINY, *MODEL_TINY, "model.num_detections=20", "dataloader.test.num_workers=0", "train.max_iter=2"
]


def lazy_cfg(name, opts=()):
    return LazyConfig.apply_overrides(LazyConfig.load(str(LAZY_DIR / name)), list(opts))


def assert_same_model(lmodel, ymodel):
    yparams, ybuffers = param_table(ymodel)
    lparams, lbuffers = param_table(lmodel)
    assert list(lparams) == list(yparams)  # same names in the same order
    assert lparams == yparams  # same shapes and frozen parameters
    assert lbuffers == ybuffers
    assert type(lmodel) is type(ymodel)
    assert type(lmodel.criterion) is type(ymodel.criterion)
    assert lmodel.criterion.weight_dict == ymodel.criterion.weight_dict
    for attr in ("num_classes", "num_queries", "in_features", "aux_loss", "with_box_refine", "two_stage",
                 "num_detections", "size_divisibility"):
        assert getattr(lmodel, attr) == getattr(ymodel, attr), attr
    assert torch.equal(lmodel.pixel_mean, ymodel.pixel_mean) and torch.equal(lmodel.pixel_std, ymodel.pixel_std)


def assert_same_schedule(lcfg, ycfg):
    assert lcfg.train.max_iter == ycfg.SOLVER.MAX_ITER
    max_iter = ycfg.SOLVER.MAX_ITER
    ysched = build_lr_scheduler(ycfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    lsched = instantiate(lcfg.lr_multiplier)
    probes = sorted({0, 1, max_iter // 2, max_iter - 1, *[s - 1 for s in ycfg.SOLVER.STEPS], *ycfg.SOLVER.STEPS})
    assert [lsched(i / max_iter) for i in probes] == pytest.approx([ysched._multiplier(i / max_iter) for i in probes])
    for step in ycfg.SOLVER.STEPS:  # the drop really happens, at the step
        assert lsched((step - 1) / max_iter) == pytest.approx(1.0) and lsched(step / max_iter) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def lazy_cache(tmp_path_factory):
    """A private ``$JOINDET_CACHE`` for this module's synthetic images and split files."""
    cache = tmp_path_factory.mktemp("lazy_pretrain_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("JOINDET_CACHE", str(cache))
    yield cache
    patch.undo()


# ----------------------------------------------------------------------------- pretraining twins
@pytest.mark.parametrize("setting", sorted(PRETRAIN_PAIRS))
def test_pretraining_config_matches_yaml(setting, tmp_path):
    lazy_name, yaml_name, num_images = PRETRAIN_PAIRS[setting]
    ycfg = yaml_cfg(YAML_DIR / yaml_name)
    lcfg = lazy_cfg(lazy_name)

    # Model: JoinDet with the same parameters, heads and frozen backbone.
    ymodel, lmodel = build_model(ycfg), instantiate(lcfg.model)
    check_aux_loss_weights(lmodel)
    assert isinstance(lmodel, JoinDet)
    assert_same_model(lmodel, ymodel)
    assert lmodel.num_classes == 1 and lmodel.criterion.weight_dict["loss_embed"] == 1.0
    assert lmodel.embed_head.layers[-1].out_features == ycfg.JOINDET.EMBED_DIM
    assert (lmodel.embed_encoder is None) == (ycfg.JOINDET.EMBED_ENCODER == "backbone")
    if setting == "r50_coco":  # the whole backbone is frozen
        assert not any(p.requires_grad for n, p in lmodel.named_parameters() if n.startswith("backbone."))
    lcfg.optimizer.params.model = lmodel
    assert lr_and_decay_by_name(lmodel, instantiate(lcfg.optimizer)) == lr_and_decay_by_name(
        ymodel, build_optimizer(ycfg, ymodel))

    # Data: the pretraining mapper (LSJ, flip, crop size, min box size), the prior-generation mapper.
    active = ActivePriors(tmp_path / "bank")  # never read here
    lmapper = instantiate_with(lcfg.dataloader.train.mapper, active_priors=active)
    ymapper = JoinDetDatasetMapper(ycfg, active_priors=active)
    for mapper in (lmapper, ymapper):
        assert mapper.active_priors is active
    assert aug_signature(lmapper.augmentations.augs) == aug_signature(ymapper.augmentations.augs)
    assert [type(a).__name__ for a in lmapper.augmentations.augs] == ["ResizeScaleKeepingPixels", "FixedSizeCrop",
                                                                         "RandomFlip"]
    for attr in ("image_format", "crop_size", "min_box_size"):
        assert getattr(lmapper, attr) == getattr(ymapper, attr), attr
    prior_mapper = instantiate(lcfg.dataloader.prior_mapper)
    assert mapper_signature(prior_mapper) == mapper_signature(DetrDatasetMapper(ycfg, is_train=False))
    train = lcfg.dataloader.train
    assert [train.dataset.names] == list(ycfg.DATASETS.TRAIN)
    assert train.dataset.filter_empty is False and ycfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    assert train.total_batch_size == ycfg.SOLVER.IMS_PER_BATCH and train.num_workers == ycfg.DATALOADER.NUM_WORKERS

    # Schedule and prior refresh period: yacs resolves epochs after merging; the LazyConfig states iterations.
    resolve_epochs(ycfg, num_images)
    assert_same_schedule(lcfg, ycfg)
    if setting == "r50_coco":
        schedule = (ycfg.SOLVER.MAX_ITER, tuple(ycfg.SOLVER.STEPS), ycfg.JOINDET.UPDATE_PERIOD_ITERS)
        assert schedule == (184850, (147880,), 36970)  # 3,697 iterations per epoch

    # The prior components: the same classes with the same arguments as the yacs route's from_config builds.
    assert lcfg.train.init_checkpoint == ycfg.MODEL.WEIGHTS
    assert str(instantiate(lcfg.active_priors).bank.root) == bank_dir(ycfg)
    assert lmodel.objectness_target == ycfg.JOINDET.PRIORS.OBJECTNESS_TARGET
    assert lmapper.train_topk == ycfg.JOINDET.PRIORS.TRAIN_TOPK == ymapper.train_topk
    hook = lcfg.prior_hook
    source = instantiate(hook.init_source)
    yacs_source = build_prior_source_from_cfg(ycfg, prior_mapper)
    assert type(source) is type(yacs_source)
    assert source.cache_key() == yacs_source.cache_key()  # a bank's version 0 serves both routes
    generator, yacs_generator = instantiate(hook.generator), build_refresh_generator(ycfg, prior_mapper)
    assert type(generator) is type(yacs_generator)
    assert mapper_signature(generator.mapper) == mapper_signature(yacs_generator.mapper)
    settings = {k: v for k, v in vars(generator).items() if k != "mapper"}
    yacs_settings = {k: v for k, v in vars(yacs_generator).items() if k != "mapper"}
    # the yacs route passes every NCut setting; a LazyConfig those it changes, generate_ncut_priors has the rest
    ncut = yacs_settings.pop("ncut")
    defaults = {k: p.default for k, p in inspect.signature(generate_ncut_priors).parameters.items() if k in ncut}
    assert {**defaults, **settings.pop("ncut")} == ncut and settings == yacs_settings
    assert instantiate(hook.smooth) == BoxSmoothSettings(ycfg)
    assert hook.period == ycfg.JOINDET.UPDATE_PERIOD_ITERS
    eval_names = hook.eval_dicts.names if hook.get("eval_dicts") is not None else ""
    assert eval_names == ycfg.JOINDET.PRIORS.EVAL_DATASET

    assert lcfg.train.output_dir == ycfg.OUTPUT_DIR
    assert lcfg.train.checkpointer.period == ycfg.SOLVER.CHECKPOINT_PERIOD
    assert lcfg.train.device == ("cpu" if setting.startswith("mini") else "cuda")


def test_switching_the_init_source_is_one_assignment():
    cfg = lazy_cfg("joindet_pretrain_r50_coco.py")
    cfg.prior_hook.init_source = L(RandomCropSource)(seed=3, topk=7)
    source = instantiate(cfg.prior_hook.init_source)
    assert source.cache_key() == {"topk": 7, "seed": 3, "min_frac": 0.1, "max_frac": 0.8, "impl": 1}
    # ncut_backbone gets the prior mapper and the init checkpoint (part of its cache key)
    cfg = lazy_cfg("joindet_pretrain_r50_coco.py")
    source = instantiate(cfg.prior_hook.init_source)
    assert mapper_signature(source.mapper) == mapper_signature(instantiate(cfg.dataloader.prior_mapper))
    assert source.cache_key()["weights"] == "checkpoints/swav_800ep_r50_d2.pth"
    assert source.cache_key()["feature"] == "res4" and source.cache_key()["topk"] == 30


# ----------------------------------------------------------------------------- fine-tuning twins
@pytest.mark.parametrize("setting", sorted(FINETUNE_PAIRS))
def test_finetuning_config_matches_yaml(setting):
    lazy_name, yaml_name, num_images = FINETUNE_PAIRS[setting]
    ycfg = yaml_cfg(YAML_DIR / yaml_name)
    lcfg = lazy_cfg(lazy_name)
    assert "joindet" not in lcfg
    iters_per_epoch, max_iter, drop = FINETUNE_ITERS[setting]
    assert resolve_epochs(ycfg, num_images) == iters_per_epoch
    assert (ycfg.SOLVER.MAX_ITER, tuple(ycfg.SOLVER.STEPS)) == (max_iter, (drop,))
    assert_same_schedule(lcfg, ycfg)
    names = lcfg.dataloader.train.dataset.names
    assert ([names] if isinstance(names, str) else list(names)) == list(ycfg.DATASETS.TRAIN)
    assert [lcfg.dataloader.test.dataset.names] == list(ycfg.DATASETS.TEST)
    assert lcfg.dataloader.evaluator.dataset_name == ycfg.DATASETS.TEST[0]
    assert lcfg.model.num_classes == ycfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES
    assert lcfg.train.init_checkpoint == ycfg.MODEL.WEIGHTS  # the pretraining output of either route
    assert lcfg.train.output_dir == ycfg.OUTPUT_DIR
    assert lcfg.train.checkpointer.period == ycfg.SOLVER.CHECKPOINT_PERIOD
    assert lcfg.dataloader.train.total_batch_size == ycfg.SOLVER.IMS_PER_BATCH
    for is_train, loader in ((True, lcfg.dataloader.train), (False, lcfg.dataloader.test)):
        assert mapper_signature(instantiate(loader.mapper)) == mapper_signature(DetrDatasetMapper(ycfg, is_train))
    if setting in ("voc", "mini_10pct"):  # build: the same parameters (VOC: a 20-class layer)
        lmodel = instantiate(lcfg.model)
        check_aux_loss_weights(lmodel)
        assert_same_model(lmodel, build_model(ycfg))
        assert all(layer.out_features == ycfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES for layer in lmodel.class_embed)


# ----------------------------------------------------------------------------- checks
def _checked(lazy_cache, *opts):
    cfg = lazy_cfg("mini_joindet_pretrain_synth.py", [*SYNTH_TINY, *opts])
    register_lazy_datasets(cfg)
    check_pretraining_config(cfg)
    return cfg


def _build_hook(cfg):
    return instantiate_with(cfg.prior_hook, active_priors=object(), dataset_dicts=[], dataset_name="synth")


@pytest.mark.parametrize(
    "opts, error, pattern",
    [
        (["prior_hook.smooth.momentum=1.5"], ValueError, r"momentum must be in \[0, 1\], got 1\.5"),
        (["prior_hook.period=-1"], ValueError, r"the refresh period must be an integer >= 0"),
        (["prior_hook.init_source.topk=0"], ValueError, r"topk must be an integer >= 1, got 0"),
        (["prior_hook.generator.eps=0"], ValueError, r"eps must be > 0"),
        (["prior_hook.generator.sigma=1"], TypeError, r"unknown NCut argument\(s\) \['sigma'\]"),
        (["prior_hook.smooth.sigma=1"], TypeError, r"unexpected keyword argument 'sigma'"),
        (["prior_hook.eval_dicts.names=no_such_set"], KeyError, r"no_such_set"),
    ],
)
def test_bad_prior_component_is_named(lazy_cache, opts, error, pattern):
    _build_hook(_checked(lazy_cache))  # the mini config passes
    with pytest.raises(error, match=pattern):
        _build_hook(_checked(lazy_cache, *opts))


def test_pretraining_config_checks(lazy_cache):
    cfg = _checked(lazy_cache)  # the mini config passes
    del cfg.active_priors
    with pytest.raises(ValueError, match=r"needs active_priors"):
        check_pretraining_config(cfg)
    cfg = _checked(lazy_cache)
    cfg.prior_hook._target_ = RandomCropSource
    with pytest.raises(ValueError, match=r"prior_hook must be an L\(PriorRefreshHook\)"):
        check_pretraining_config(cfg)
    cfg = _checked(lazy_cache)
    del cfg.dataloader.prior_mapper
    with pytest.raises(ValueError, match=r"dataloader\.prior_mapper"):
        check_pretraining_config(cfg)


def test_prior_hook_goes_before_the_checkpointer_and_the_evaluation(tmp_path):
    timer = hooks.IterationTimer()
    checkpointer = hooks.PeriodicCheckpointer(DetectionCheckpointer(torch.nn.Linear(1, 1), str(tmp_path)), 10)
    evaluation, refresh = hooks.EvalHook(0, dict), object()
    assert insert_prior_hook([timer, checkpointer, evaluation, None], refresh) == [
        timer, refresh, checkpointer, evaluation, None]
    # a process without a checkpointer: the same order relative to the evaluation (both communicate)
    assert insert_prior_hook([timer, None, evaluation, None], refresh) == [timer, None, refresh, evaluation, None]
    assert insert_prior_hook([timer], refresh) == [timer, refresh]


def test_model_and_prior_hook_must_agree(lazy_cache, tmp_path):
    args = argparse.Namespace(resume=False)
    opts = [*SYNTH_TINY, *MODEL_TINY, "model.num_detections=10", "train.max_iter=1", f"train.output_dir={tmp_path}"]
    supervised = lazy_cfg("mini_deformable_detr_synth.py", opts)
    supervised.prior_hook = lazy_cfg("mini_joindet_pretrain_synth.py").prior_hook
    with pytest.raises(ValueError, match=r"model is a DeformableDETR and the config has a prior_hook"):
        do_train(args, supervised)
    pretraining = lazy_cfg("mini_joindet_pretrain_synth.py", opts)
    del pretraining.prior_hook
    with pytest.raises(ValueError, match=r"model is a JoinDet and the config has no prior_hook"):
        do_train(args, pretraining)


# ----------------------------------------------------------------------------- train_net.py
@pytest.fixture(scope="module")
def pretrain_run(lazy_cache, tmp_path_factory):
    """``train_net.py`` on the mini pretraining LazyConfig with tiny overrides, initialised from a
    checkpoint whose backbone differs from its embedding encoder (noise added to the backbone's weights).
    Returns (output dir, captured output, that initial state dict)."""
    root = tmp_path_factory.mktemp("lazy_pretrain")
    out = root / "output"
    torch.manual_seed(0)
    model = instantiate(lazy_cfg("mini_joindet_pretrain_synth.py", PRETRAIN_TINY).model)
    init = model.state_dict()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            init[name] = param.detach() + 0.01 * torch.randn_like(param)
    torch.save({"model": init}, root / "init.pth")
    output = run_lazy_train_net(
        ["--config-file", str(LAZY_DIR / "mini_joindet_pretrain_synth.py"), f"train.output_dir={out}",
         f"train.init_checkpoint={root / 'init.pth'}", *PRETRAIN_TINY],
        env={**os.environ, "JOINDET_CACHE": str(lazy_cache), "OMP_NUM_THREADS": "1"},
    )
    return out, output, init


def _backbone(state):
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_train_net_lazy_pretraining_builds_the_bank(pretrain_run, lazy_cache):
    out, output, init = pretrain_run
    bank = PriorBank(out / "prior_bank")
    assert bank.versions() == [0, 1, 2]
    v0 = bank.read(0)
    key = v0.meta["info"]["source_key"]
    assert key["source"] == "random_crops" and key["dataset"] == "synth_train_unlabeled"
    assert key["settings"]["topk"] == 10 and len(v0) == 8 and v0.num_boxes == 80
    assert [bank.read(v).meta["info"]["iteration"] for v in (1, 2)] == [2, 4]  # refreshed after iterations 2, 4
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 4
    assert ckpt["trainer"]["hooks"][HOOK_KEY]["version"] == 2  # the version in use is checkpointed
    assert any(k.startswith("embed_head.") for k in ckpt["model"])
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(r["loss_embed"]) and r["loss_embed"] > 0 for r in losses)
    versions = [r["priors/version"] for r in records if "priors/version" in r]
    assert versions == [0, 1, 2]
    assert "Prior quality per version" in output  # scored against synth_train (prior_hook.eval_dicts)
    # the embedding targets come from the frozen backbone itself (no copy), loaded from the checkpoint
    # (the noisy weights, not the package's ImageNet ones) and unchanged by training
    assert not any(k.startswith("embed_encoder.") for k in ckpt["model"])
    loaded = _backbone(init)
    assert len(loaded) > 200 and all(torch.equal(ckpt["model"][k], v) for k, v in loaded.items())


def test_lazy_pretraining_resumes_with_the_checkpointed_version(pretrain_run, lazy_cache, tmp_path, one_torch_thread):
    src, _, init = pretrain_run
    out = tmp_path / "resumed"
    shutil.copytree(src, out)
    args = argparse.Namespace(
        config_file=str(LAZY_DIR / "mini_joindet_pretrain_synth.py"), resume=True, eval_only=False, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
        opts=[*PRETRAIN_TINY, "train.max_iter=7", f"train.output_dir={out}"],
    )
    lazy_main(args)
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 6  # iterations 5 and 6 after the 5 of the first run
    # the resumed run continued with version 2 (restored from the checkpoint, version 0 not recomputed)
    # and refreshed after iteration 6 (1-based) of 7 -> version 3
    assert PriorBank(out / "prior_bank").versions() == [0, 1, 2, 3]
    assert ckpt["trainer"]["hooks"][HOOK_KEY]["version"] == 3
    assert PriorBank(out / "prior_bank").read(3).meta["info"]["iteration"] == 6
    log = (out / "log.txt").read_text()
    assert "Resumed with prior bank version 2" in log
    # the frozen backbone is still the one loaded at the start
    assert all(torch.equal(ckpt["model"][k], v) for k, v in _backbone(init).items())


def test_train_net_lazy_finetunes_from_the_pretraining_checkpoint(pretrain_run, lazy_cache, tmp_path):
    pretrained, _, _ = pretrain_run
    out = tmp_path / "finetune"
    output = run_lazy_train_net(
        ["--config-file", str(LAZY_DIR / "mini_finetune_synth_10pct.py"),
         f"train.init_checkpoint={pretrained / 'model_final.pth'}", f"train.output_dir={out}", *FINETUNE_TINY],
        env={**os.environ, "JOINDET_CACHE": str(lazy_cache), "OMP_NUM_THREADS": "1"},
    )
    assert "Dropped pretraining-only keys" in output and "Newly initialised" in output
    source = torch.load(pretrained / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1
    assert not any(k.startswith(("embed_head.", "embed_encoder.")) for k in ckpt["model"])
    class_weights = [v for k, v in ckpt["model"].items() if k.startswith("class_embed.") and k.endswith(".weight")]
    assert class_weights and all(w.shape[0] == 6 for w in class_weights)  # a new 6-class layer (pretrained: 1)
    # the transformer started from the pretrained weights: two AdamW steps of lr 2e-4 move each value by
    # at most ~4e-4, while a fresh initialisation (normal, std 1) would differ by about 1
    name = "transformer.level_embed"
    assert torch.allclose(ckpt["model"][name], source[name], atol=1e-3)
    assert not torch.equal(ckpt["model"][name], source[name])  # and trained
    values = csv_values(output)
    assert CSV_HEADER in output and len(values) == 6
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in values)
