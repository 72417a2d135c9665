"""One engine, two config front-ends: the yacs route and the LazyConfig route of ``train_net.py`` are equal.

(a) the same mini pretraining (tiny sizes, a refresh every 2 iterations) through the yacs config
    ``configs/mini/pretrain_synth.yaml`` and its LazyConfig twin ``mini_joindet_pretrain_synth.py``, from the
    same initial weights and seed, ends with the same bank versions and bit-identical weights;
(b) a LazyConfig pretrains on an unlabelled image folder named by an override (``dataloader.image_folders``);
(c) a LazyConfig run killed (SIGKILL) mid-iteration and resumed with ``--resume`` ends bit-identical to the
    uninterrupted run (the resumable sampler, the checkpointed random generators and bank version);
and a LazyConfig's epochs (``train.epochs``, ``train.prior_period_epochs``) become iterations from the training
set's size after the overrides, as ``SOLVER.EPOCHS`` / ``JOINDET.UPDATE_PERIOD`` do on the yacs side; both
built-in generated domains (``synth_*``, ``clutter_*``) are registered for a LazyConfig.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog

import joindet.modeling  # noqa: F401  (registers the meta-architectures)
from joindet.engine.lazy import register_lazy_datasets, resolve_lazy_epochs
from joindet.priors.bank import PriorBank

from conftest import LAZY_TINY_PRIOR_HOOK_OPTS, REPO_ROOT, TEST_SEED, TINY_DATA_OPTS, TINY_MODEL_OPTS

from test_pretraining import PRETRAIN_CONFIG, TINY_PRETRAIN_OPTS

LAZY_CONFIG = REPO_ROOT / "projects" / "JoinDet" / "configs" / "mini_joindet_pretrain_synth.py"
RUNNER = REPO_ROOT / "tests" / "helpers" / "fault_runner.py"
HOOKS = "PriorRefreshHook"

# The LazyConfig twin of TINY_DATA_OPTS + TINY_MODEL_OPTS + TINY_PRETRAIN_OPTS on the yacs mini pretraining
# config, key for key: 8 synthetic train images of 64 px, batch 2, no loader worker; d 64, 1+1 layers, FFN 128,
# 10 queries, 20 detections; 64 px LSJ (the image size) and 32 px crops; random-crop version 0 with K = 10,
# NCut refreshes on the stride-8 level, 4 images per batch.
LAZY_TWIN_OPTS = [
    "dataloader.synthetic.num_train=8",
    "dataloader.synthetic.num_val=4",
    "dataloader.synthetic.image_size=64",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "model.transformer.d_model=64",
    "model.transformer.num_encoder_layers=1",
    "model.transformer.num_decoder_layers=1",
    "model.transformer.dim_feedforward=128",
    "model.criterion.weight_dict.num_aux=0",
    "model.num_queries=10",
    "model.num_detections=20",
    "dataloader.train.mapper.crop_size=32",
    *LAZY_TINY_PRIOR_HOOK_OPTS,
    f"train.seed={TEST_SEED}",
]


def _lazy_cfg(*opts):
    return LazyConfig.apply_overrides(LazyConfig.load(str(LAZY_CONFIG)), [*LAZY_TWIN_OPTS, *opts])


def _train_net(args, env, runner=REPO_ROOT / "train_net.py", timeout=300):
    proc = subprocess.run([sys.executable, str(runner), *[str(a) for a in args]], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _bank_arrays(output_dir):
    bank = PriorBank(Path(output_dir) / "prior_bank")
    return {v: {name: np.asarray(getattr(bank.read(v), name)).copy()
                for name in ("image_ids", "offsets", "boxes", "scores")} for v in bank.versions()}


def _assert_same_run(got_dir, want_dir, versions):
    want = torch.load(Path(want_dir) / "model_final.pth", map_location="cpu", weights_only=True)
    got = torch.load(Path(got_dir) / "model_final.pth", map_location="cpu", weights_only=True)
    assert got["iteration"] == want["iteration"]
    assert sorted(got["model"]) == sorted(want["model"])
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"{name} differs"
    assert got["trainer"]["hooks"][HOOKS] == want["trainer"]["hooks"][HOOKS]
    want_bank, got_bank = _bank_arrays(want_dir), _bank_arrays(got_dir)
    assert sorted(got_bank) == sorted(want_bank) == versions
    for v, arrays in want_bank.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(got_bank[v][name], array, err_msg=f"version {v} {name}")


@pytest.fixture(scope="module")
def init_checkpoint(synthetic_cache, tmp_path_factory):
    """Initial weights of the tiny JoinDet, given to both routes (each then starts from the same model)."""
    torch.manual_seed(TEST_SEED)
    model = instantiate(_lazy_cfg().model)
    path = tmp_path_factory.mktemp("parity_init") / "init.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- (a) the two routes agree
def test_yacs_and_lazy_twins_pretrain_to_the_same_bank_and_weights(init_checkpoint, subprocess_env, tmp_path):
    yacs_out, lazy_out = tmp_path / "yacs", tmp_path / "lazy"
    # 5 iterations, refreshes after iterations 2 and 4 (1-based): versions 0, 1, 2
    _train_net(["--config-file", PRETRAIN_CONFIG, *TINY_DATA_OPTS, *TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS,
                "SOLVER.MAX_ITER", "5", "JOINDET.UPDATE_PERIOD_ITERS", "2", "MODEL.WEIGHTS", init_checkpoint,
                "SEED", str(TEST_SEED), "OUTPUT_DIR", yacs_out], subprocess_env)
    _train_net(["--config-file", LAZY_CONFIG, *LAZY_TWIN_OPTS, "train.max_iter=5", "prior_hook.period=2",
                f"train.init_checkpoint={init_checkpoint}", f"train.output_dir={lazy_out}"], subprocess_env)
    _assert_same_run(lazy_out, yacs_out, versions=[0, 1, 2])
    for v in (0, 1, 2):  # and the same record of how each version was made
        info = [PriorBank(out / "prior_bank").read(v).meta["info"] for out in (yacs_out, lazy_out)]
        assert info[0]["source"] == info[1]["source"] == ("random_crops" if v == 0 else "ncut_encoder")
        if v == 0:
            assert info[0]["source_key"] == info[1]["source_key"]


# ----------------------------------------------------------------------------- (b) an image folder
def test_lazy_pretraining_on_an_image_folder_given_by_an_override(synthetic_cache, subprocess_env, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.full((64, 64, 3), rng.integers(0, 256, 3), np.uint8)
        y, x = rng.integers(0, 32, 2)
        image[y:y + 24, x:x + 24] = rng.integers(0, 256, 3)  # a square on a flat ground
        Image.fromarray(image).save(folder / ("sub" if i % 2 else "") / f"img{i}.png")
    out = tmp_path / "out"
    _train_net(["--config-file", LAZY_CONFIG, *LAZY_TWIN_OPTS, f"dataloader.image_folders.photos={folder}",
                "dataloader.train.dataset.names=photos", "prior_hook.eval_dicts=null", "train.max_iter=3",
                "prior_hook.period=2", f"train.output_dir={out}"], subprocess_env)
    bank = PriorBank(out / "prior_bank")
    assert bank.versions() == [0, 1]
    v0 = bank.read(0)
    assert v0.meta["info"]["source_key"]["dataset"] == "photos" and len(v0) == 6 and v0.num_boxes == 60
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 2


# ----------------------------------------------------------------------------- (c) kill and resume
# 8 iterations, refreshes after iterations 3 and 6 (1-based), checkpoints after iterations 2, 4, 6 and 8.
RESUME_OPTS = ["train.max_iter=8", "train.checkpointer.period=2", "prior_hook.period=3"]


def _lazy_argv(output_dir, resume=False):
    return ["--config-file", LAZY_CONFIG, *(["--resume"] if resume else []), *LAZY_TWIN_OPTS, *RESUME_OPTS,
            f"train.output_dir={output_dir}"]


def test_killed_lazy_run_resumes_to_the_uninterrupted_result(synthetic_cache, subprocess_env, tmp_path):
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "run"
    _train_net(_lazy_argv(uninterrupted), subprocess_env)

    # SIGKILL inside iteration 5 (0-based 4): the last checkpoint is that of iteration 4, version 1
    marker = tmp_path / "marker"
    env = {**subprocess_env, "JOINDET_TEST_FAULT": "step:4", "JOINDET_TEST_MARKER": str(marker)}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(RUNNER), *[str(a) for a in _lazy_argv(out)]], cwd=REPO_ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the run did not reach iteration 5"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert PriorBank(out / "prior_bank").versions() == [0, 1]

    text = _train_net(_lazy_argv(out, resume=True), subprocess_env)
    assert "Resumed with prior bank version 1" in (out / "log.txt").read_text() + text
    _assert_same_run(out, uninterrupted, versions=[0, 1, 2])


# ----------------------------------------------------------------------------- epochs and domains
def test_lazy_epochs_become_iterations_after_the_overrides(synthetic_cache):
    cfg = _lazy_cfg("train.epochs=2.5", "train.prior_period_epochs=1", "prior_hook.period=0",
                    "dataloader.train.total_batch_size=3")
    register_lazy_datasets(cfg)
    assert resolve_lazy_epochs(cfg) == 3  # ceil(8 images / 3)
    assert cfg.train.max_iter == 8 and cfg.prior_hook.period == 3  # round(2.5 x 3), 1 x 3
    # an explicit period in iterations wins, as JOINDET.UPDATE_PERIOD_ITERS does
    cfg = _lazy_cfg("train.prior_period_epochs=1", "prior_hook.period=5")
    register_lazy_datasets(cfg)
    assert resolve_lazy_epochs(cfg) is None and cfg.prior_hook.period == 5 and cfg.train.max_iter == 300


def test_lazy_route_registers_both_generated_domains(synthetic_cache, tmp_path):
    cfg = _lazy_cfg()
    cfg.dataloader.clutter = {"root": str(tmp_path), "num_train": 3, "num_val": 2, "image_size": 64, "seed": 1}
    cfg.dataloader.train.dataset.names = "clutter_train_unlabeled"
    register_lazy_datasets(cfg)
    assert len(DatasetCatalog.get("clutter_train_unlabeled")) == 3 and len(DatasetCatalog.get("synth_train")) == 8
    cfg.dataloader.clutter.size = 3
    with pytest.raises(ValueError, match=r"dataloader\.clutter has unknown keys \['size'\]"):
        register_lazy_datasets(cfg)
