"""The LazyConfig route (``projects/JoinDet/configs/*.py``, ``joindet.engine.lazy``) against the yacs route.

Model, optimiser, schedule and data settings must match their YAML twins exactly; ``train_net.py``
with a ``.py`` config trains (2 processes, gloo DDP on the CPU), checkpoints, evaluates, resumes and
evaluates a checkpoint with ``--eval-only``.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

import joindet.modeling  # noqa: F401  (registers the meta-architectures)
from joindet.config import add_joindet_config, resolve_epochs
from joindet.data.mapper import DetrDatasetMapper
from joindet.engine.lazy import check_aux_loss_weights, lazy_main, register_lazy_datasets
from joindet.engine.optimizer import build_optimizer, with_full_model_clipping

from conftest import free_port, run_train_net

REPO = Path(__file__).resolve().parents[1]
LAZY_DIR = REPO / "projects" / "JoinDet" / "configs"
LAZY_MINI = LAZY_DIR / "mini_deformable_detr_synth.py"
LAZY_COCO = LAZY_DIR / "deformable_detr_r50_coco.py"
YAML_MINI = REPO / "configs" / "mini" / "deformable_detr_synth.yaml"
YAML_COCO = REPO / "configs" / "deformable_detr_r50_coco.yaml"
COCO_TRAIN_IMAGES = 117266  # train2017 images with at least one box

# Tiny run: 8 train / 4 val synthetic images of 64 px, batch 2, no loader workers.
TINY_OPTS = [
    "dataloader.synthetic.num_train=8",
    "dataloader.synthetic.num_val=4",
    "dataloader.synthetic.image_size=64",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.log_period=1",
]
CSV_HEADER = "copypaste: AP,AP50,AP75,APs,APm,APl"


# ----------------------------------------------------------------------------- helpers
def yaml_cfg(path):
    """The yacs cfg of ``path`` as ``joindet.engine.launcher.setup`` merges it (no overrides)."""
    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def param_table(model):
    """name -> (shape, requires_grad) of every parameter, name -> shape of every buffer."""
    params = {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers()}
    return params, buffers


def lr_and_decay_by_name(model, optimizer):
    """name -> (lr, weight_decay) of every parameter the optimiser updates."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }


def aug_signature(augmentations):
    """Comparable description of a list of augmentations: type and public attributes, with
    sequences as sorted sets (a "choice" of sizes, given as a tuple in YAML and a list in Python)."""
    sig = []
    for aug in augmentations:
        attrs = {
            k: tuple(sorted(set(v))) if isinstance(v, Sequence) and not isinstance(v, str) else v
            for k, v in vars(aug).items()
            if not k.startswith("_")
        }
        sig.append((type(aug).__name__, sorted(attrs.items())))
    return sig


def mapper_signature(mapper):
    return (
        mapper.is_train,
        mapper.image_format,
        mapper.use_instance_mask,
        mapper.recompute_boxes,
        aug_signature(mapper.augmentations.augs),
    )


def load_schedule_module():
    """``projects/JoinDet/configs/common/schedule.py`` as a module (it is a config file, not a package)."""
    spec = importlib.util.spec_from_file_location("joindet_lazy_schedule", LAZY_DIR / "common" / "schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_lazy_train_net(args, env, timeout=240):
    """``train_net.py`` ``args`` (conftest's seeded runner); asserts success and returns the output."""
    proc = run_train_net(args, env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def csv_values(output):
    """The AP numbers printed under the last ``copypaste: AP,...`` header (floats; nan allowed)."""
    lines = output.splitlines()
    idx = max(i for i, line in enumerate(lines) if line.endswith(CSV_HEADER))
    values = lines[idx + 1].split("copypaste: ", 1)[1].split(",")
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lazy_cache(tmp_path_factory):
    """A private ``$JOINDET_CACHE`` for this module's synthetic images (restored afterwards)."""
    cache = tmp_path_factory.mktemp("lazy_joindet_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("JOINDET_CACHE", str(cache))
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def trained_run(lazy_cache, tmp_path_factory):
    """``train_net.py`` on the mini LazyConfig: 2 iterations in 2 processes (gloo DDP on the CPU).
    Returns (output dir, captured output)."""
    out = tmp_path_factory.mktemp("lazy_train") / "output"
    output = run_lazy_train_net(
        [
            "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
            "--config-file", str(LAZY_MINI),
            "train.max_iter=2", f"train.output_dir={out}", *TINY_OPTS,
            "dataloader.train.total_batch_size=4",  # 2 images per process: the mini R18's BatchNorm trains
        ],
        # one thread per process: two processes share the CPU cores
        env={**os.environ, "JOINDET_CACHE": str(lazy_cache), "OMP_NUM_THREADS": "1"},
    )
    return out, output


# ----------------------------------------------------------------------------- same settings as YAML
@pytest.mark.parametrize(
    "lazy_path, yaml_path", [(LAZY_MINI, YAML_MINI), (LAZY_COCO, YAML_COCO)], ids=["mini", "r50_coco"]
)
def test_lazy_model_and_optimizer_match_yaml(lazy_path, yaml_path):
    ycfg = yaml_cfg(yaml_path)
    lcfg = LazyConfig.load(str(lazy_path))
    ymodel = build_model(ycfg)
    lmodel = instantiate(lcfg.model)
    check_aux_loss_weights(lmodel)

    yparams, ybuffers = param_table(ymodel)
    lparams, lbuffers = param_table(lmodel)
    assert list(lparams) == list(yparams)  # same names in the same order
    assert lparams == yparams  # same shapes and frozen parameters
    assert lbuffers == ybuffers
    assert lmodel.criterion.weight_dict == ymodel.criterion.weight_dict
    for attr in ("num_classes", "num_queries", "in_features", "aux_loss", "with_box_refine", "two_stage",
                 "num_detections", "size_divisibility"):
        assert getattr(lmodel, attr) == getattr(ymodel, attr), attr
    assert torch.equal(lmodel.pixel_mean, ymodel.pixel_mean) and torch.equal(lmodel.pixel_std, ymodel.pixel_std)

    # Optimiser: the same class, clipping, and per-parameter lr and weight decay.
    yopt = build_optimizer(ycfg, ymodel)
    lcfg.optimizer.params.model = lmodel
    lopt = instantiate(lcfg.optimizer)
    assert type(lopt).__name__ == type(yopt).__name__ == "FullModelClippingAdamW"
    assert lopt.max_norm == yopt.max_norm == pytest.approx(0.1)
    assert lopt.defaults["lr"] == yopt.defaults["lr"] and lopt.defaults["weight_decay"] == yopt.defaults["weight_decay"]
    ylr, llr = lr_and_decay_by_name(ymodel, yopt), lr_and_decay_by_name(lmodel, lopt)
    assert llr == ylr
    expected_backbone_lr = ycfg.SOLVER.BASE_LR * ycfg.SOLVER.BACKBONE_MULTIPLIER
    trainable_backbone = [n for n in llr if n.startswith("backbone.")]
    if any(p.requires_grad for p in lmodel.backbone.parameters()):  # R50: res3-res5 train at the backbone lr
        assert trainable_backbone and all(llr[n][0] == pytest.approx(expected_backbone_lr) for n in trainable_backbone)
    else:  # the mini model's frozen Lite0: nothing of it in the optimizer
        assert not trainable_backbone and type(lmodel.backbone).__name__ == "TimmBackbone"

    # Data: mappers, batch, workers, dataset names.
    for is_train, loader in ((True, lcfg.dataloader.train), (False, lcfg.dataloader.test)):
        assert mapper_signature(instantiate(loader.mapper)) == mapper_signature(DetrDatasetMapper(ycfg, is_train))
        assert loader.num_workers == ycfg.DATALOADER.NUM_WORKERS
    assert lcfg.dataloader.train.total_batch_size == ycfg.SOLVER.IMS_PER_BATCH
    assert [lcfg.dataloader.train.dataset.names] == list(ycfg.DATASETS.TRAIN)
    assert [lcfg.dataloader.test.dataset.names] == list(ycfg.DATASETS.TEST)
    assert lcfg.dataloader.evaluator.dataset_name == ycfg.DATASETS.TEST[0]
    assert lcfg.train.checkpointer.period == ycfg.SOLVER.CHECKPOINT_PERIOD
    assert lcfg.train.eval_period == ycfg.TEST.EVAL_PERIOD

    # Schedule: yacs resolves epochs after merging; the LazyConfig states the iterations.
    if yaml_path == YAML_COCO:
        iters_per_epoch = resolve_epochs(ycfg, COCO_TRAIN_IMAGES)
        assert iters_per_epoch == 3665 and ycfg.SOLVER.MAX_ITER == 183250 and tuple(ycfg.SOLVER.STEPS) == (146600,)
    assert lcfg.train.max_iter == ycfg.SOLVER.MAX_ITER
    ysched = build_lr_scheduler(ycfg, yopt)
    lsched = instantiate(lcfg.lr_multiplier)
    max_iter = ycfg.SOLVER.MAX_ITER
    probes = sorted({0, 1, max_iter // 2, max_iter - 1, *[s - 1 for s in ycfg.SOLVER.STEPS], *ycfg.SOLVER.STEPS})
    yvalues = [ysched._multiplier(i / max_iter) for i in probes]
    assert [lsched(i / max_iter) for i in probes] == pytest.approx(yvalues)
    if ycfg.SOLVER.STEPS:  # the drop really happens, at the step
        assert lsched((ycfg.SOLVER.STEPS[0] - 1) / max_iter) == pytest.approx(1.0)
        assert lsched(ycfg.SOLVER.STEPS[0] / max_iter) == pytest.approx(0.1)

    if yaml_path == YAML_MINI:
        s = lcfg.dataloader.synthetic
        y = ycfg.DATASETS.SYNTHETIC
        assert (s.num_train, s.num_val, s.image_size, s.seed) == (y.NUM_TRAIN, y.NUM_VAL, y.IMAGE_SIZE, y.SEED)
        assert lcfg.train.device == ycfg.MODEL.DEVICE == "cpu"


def test_mismatched_aux_loss_weights_are_rejected():
    cfg = LazyConfig.load(str(LAZY_MINI))
    cfg = LazyConfig.apply_overrides(cfg, ["model.transformer.num_decoder_layers=4"])
    with pytest.raises(ValueError, match=r"num_aux=3"):
        check_aux_loss_weights(instantiate(cfg.model))
    cfg = LazyConfig.apply_overrides(cfg, ["model.criterion.weight_dict.num_aux=3"])
    model = instantiate(cfg.model)
    check_aux_loss_weights(model)
    assert sorted(k for k in model.criterion.weight_dict if k.startswith("loss_ce")) == [
        "loss_ce", "loss_ce_0", "loss_ce_1", "loss_ce_2"
    ]


def test_step_lr_multiplier_is_scale_invariant_and_checked():
    schedule = load_schedule_module()
    assert schedule.iters_per_epoch(COCO_TRAIN_IMAGES, 32) == 3665
    assert schedule.iters_per_epoch(8, 3) == 3
    sched = instantiate(schedule.step_lr_multiplier(total_iters=50, drop_iters=[40], warmup_iters=5))
    # linear warm-up from 0.001 to 1 over the first 10% of the run, drop x0.1 at 80%
    assert sched(0.0) == pytest.approx(0.001)
    assert sched(0.05) == pytest.approx(0.001 + 0.5 * 0.999)
    assert sched(0.5) == pytest.approx(1.0)
    assert sched(0.799) == pytest.approx(1.0)
    assert sched(0.8) == pytest.approx(0.1)
    # the same schedule in iterations (x 3,665) gives the same values at the same fractions
    big = instantiate(schedule.step_lr_multiplier(total_iters=50 * 3665, drop_iters=[40 * 3665], warmup_iters=5 * 3665))
    for where in (0.0, 0.05, 0.5, 0.799, 0.8, 0.99):
        assert big(where) == pytest.approx(sched(where))
    for bad in ({"total_iters": 0}, {"total_iters": 10, "drop_iters": [10]}, {"total_iters": 10, "drop_iters": [5, 3]},
                {"total_iters": 10, "warmup_iters": 11}):
        with pytest.raises(ValueError):
            schedule.step_lr_multiplier(**bad)
    with pytest.raises(ValueError, match="total_batch_size"):
        schedule.iters_per_epoch(10, 0)


def test_full_model_clipping_matches_clip_grad_norm():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2))
    grads = [torch.randn(5) * 10, torch.randn(3, 2) * 10]
    a.grad, b.grad = grads[0].clone(), grads[1].clone()
    ref = [g.clone() for g in grads]
    total = torch.sqrt(sum((g**2).sum() for g in ref))
    ref = [g * (0.1 / (total + 1e-6)) for g in ref]
    # lr 0: the step changes nothing but clips the gradients of both groups together
    opt = with_full_model_clipping("torch.optim.SGD", 0.1)([{"params": [a]}, {"params": [b]}], lr=0.0)
    assert type(opt).__name__ == "FullModelClippingSGD"
    opt.step()
    assert torch.allclose(a.grad, ref[0], atol=1e-6) and torch.allclose(b.grad, ref[1], atol=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        with_full_model_clipping(torch.optim.AdamW, 0.0)
    with pytest.raises(ValueError, match="optimizer class"):
        with_full_model_clipping("torch.optim.NoSuchOptimizer", 0.1)
    with pytest.raises(ValueError, match="Optimizer subclass"):
        with_full_model_clipping(torch.nn.Linear, 0.1)


def test_register_lazy_datasets_names_bad_keys(lazy_cache):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(LAZY_MINI)), TINY_OPTS)
    register_lazy_datasets(cfg)  # the synthetic names resolve
    bad_name = LazyConfig.apply_overrides(cfg, ["dataloader.train.dataset.names=no_such_set"])
    with pytest.raises(ValueError, match=r"no_such_set.*dataloader\.train\.dataset\.names"):
        register_lazy_datasets(bad_name)
    cfg = LazyConfig.load(str(LAZY_MINI))
    cfg.dataloader.synthetic.size = 3
    with pytest.raises(ValueError, match=r"dataloader\.synthetic has unknown keys \['size'\]"):
        register_lazy_datasets(cfg)


# ----------------------------------------------------------------------------- train_net.py
def test_train_net_lazy_trains_checkpoints_and_evaluates(trained_run):
    out, output = trained_run
    assert "World size: 2" in output  # two processes: DDP of a CPU model, without device ids
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1  # the last finished iteration (0-based) of 2
    steps = {float(state["step"]) for state in ckpt["trainer"]["optimizer"]["state"].values()}
    assert steps == {2.0}  # every parameter took two AdamW steps
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [0, 1]
    assert all(math.isfinite(r["total_loss"]) and r["lr"] == pytest.approx(2e-4) for r in losses)
    assert {"loss_ce_0", "loss_ce_1", "loss_giou"} <= set(losses[0])  # 3 decoder layers: 2 auxiliary
    final_eval = [r for r in records if "bbox/AP" in r]
    assert len(final_eval) == 1 and final_eval[0]["iteration"] == 2
    assert CSV_HEADER in output
    assert len(csv_values(output)) == 6


def test_train_net_lazy_eval_only(trained_run, lazy_cache, tmp_path):
    out, _ = trained_run
    output = run_lazy_train_net(
        [
            "--eval-only", "--config-file", str(LAZY_MINI),
            f"train.init_checkpoint={out / 'model_final.pth'}", f"train.output_dir={tmp_path / 'eval'}", *TINY_OPTS,
        ],
        env={**os.environ, "JOINDET_CACHE": str(lazy_cache)},
    )
    assert f"Loading from {out / 'model_final.pth'}" in output
    assert "Initializing model from scratch" not in output
    assert "Starting training" not in output
    values = csv_values(output)
    assert len(values) == 6
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in values)


def test_lazy_main_resumes(trained_run, lazy_cache, tmp_path):
    src, _ = trained_run
    out = tmp_path / "resumed"
    shutil.copytree(src, out)
    args = argparse.Namespace(
        config_file=str(LAZY_MINI), resume=True, eval_only=False, num_gpus=1, num_machines=1, machine_rank=0,
        dist_url="auto", opts=["train.max_iter=3", f"train.output_dir={out}", *TINY_OPTS],
    )
    results = lazy_main(args)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2  # one more iteration after the two of the first run
    steps = {float(state["step"]) for state in ckpt["trainer"]["optimizer"]["state"].values()}
    assert steps == {3.0}  # the optimiser state came back with the checkpoint
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    # the first run wrote iterations 0 and 1; the resumed one appended iteration 2 only
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1, 2]
    assert re.search(r"Starting training from iteration 2", (out / "log.txt").read_text())
