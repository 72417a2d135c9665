"""Shared fixtures of the integration tests: a tiny synthetic dataset cached once per session
(under ``$JOINDET_CACHE``), yacs configs built from ``configs/mini/deformable_detr_synth.yaml``
with tiny overrides, and batches of mapped synthetic images."""

import json
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from joindet.config import add_joindet_config, validate_config
from joindet.data.datasets import register_datasets
from joindet.data.mapper import DetrDatasetMapper

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI_CONFIG = REPO_ROOT / "configs" / "mini" / "deformable_detr_synth.yaml"  # frozen pretrained Lite0
MINI_R18_CONFIG = REPO_ROOT / "configs" / "mini" / "deformable_detr_synth_r18.yaml"  # R18 trained from scratch
COCO_CONFIG = REPO_ROOT / "configs" / "deformable_detr_r50_coco.yaml"

TINY_IMAGE_SIZE = 64

# Dataset, input, loader and schedule overrides shared by every tiny run (strings, so that the same
# list serves merge_from_list and a train_net.py command line).
TINY_DATA_OPTS = [
    "DATASETS.TRAIN", "('synth_train',)",
    "DATASETS.TEST", "('synth_val',)",
    "DATASETS.SYNTHETIC.NUM_TRAIN", "8",
    "DATASETS.SYNTHETIC.NUM_VAL", "4",
    "DATASETS.SYNTHETIC.IMAGE_SIZE", str(TINY_IMAGE_SIZE),
    "INPUT.MIN_SIZE_TRAIN", f"({TINY_IMAGE_SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(TINY_IMAGE_SIZE),
    "INPUT.MIN_SIZE_TEST", str(TINY_IMAGE_SIZE),
    "INPUT.MAX_SIZE_TEST", str(TINY_IMAGE_SIZE),
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.EPOCHS", "0.0",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "TEST.EVAL_PERIOD", "0",
]

# The tiny model of the model tests: d 64, 2+2 layers, 10 queries, FFN 128 (the backbone is the mini
# config's: the frozen Lite0, or the R18 with trainable BN of MINI_R18_CONFIG). NUM_DETECTIONS must stay <= NUM_QUERIES * NUM_CLASSES (10 * 6).
TINY_MODEL_OPTS = [
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM", "64",
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "2",
    "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "2",
    "MODEL.DEFORMABLE_DETR.NUM_QUERIES", "10",
    "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", "128",
    "MODEL.DEFORMABLE_DETR.NUM_DETECTIONS", "20",
]


# The tiny prior hook of a LazyConfig pretraining (``prior_hook.*`` overrides): random-crop version 0 with
# K = 10, NCut refreshes on the stride-8 level (level 0 of a tiny run), 4 images per refresh batch.
LAZY_TINY_PRIOR_HOOK_OPTS = [
    "prior_hook.init_source._target_=joindet.priors.random_crops.RandomCropSource",
    "prior_hook.init_source.topk=10",
    "prior_hook.smooth.topk=10",
    "prior_hook.generator.topk=10",
    "prior_hook.generator.feature_level=0",
    "prior_hook.generator.batch_size=4",
]

TEST_SEED = 0  # every test starts from this seed; every train_net.py subprocess runs with it


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Seed Python, numpy and torch before every test: augmentations, samplers and initialisations of
    in-process runs are the same on every run of the suite."""
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)


def run_train_net(args, env, timeout=240):
    """Run ``train_net.py`` ``args`` in the repo root with a fixed seed (``SEED``, or ``train.seed`` for a
    ``.py`` config, appended unless ``args`` sets it): the subprocess's data order and augmentations are
    the same on every run. Returns the CompletedProcess, stdout and stderr merged."""
    args = [str(a) for a in args]
    lazy = any(a.endswith(".py") for a in args)
    if lazy and not any(a.startswith("train.seed=") for a in args):
        args.append(f"train.seed={TEST_SEED}")
    elif not lazy and "SEED" not in args:
        args += ["SEED", str(TEST_SEED)]
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )


def read_folder_bytes(folder):
    """{file name: bytes} of every file directly in ``folder`` (byte-identity checks of generated data)."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def load_json(json_path):
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``--dist-url``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_cfg(opts=(), config_file=MINI_CONFIG, output_dir=None, tiny_model=True, data_opts=True):
    """A mutable yacs cfg: ``config_file`` + (``TINY_DATA_OPTS``) + (``TINY_MODEL_OPTS``) + ``opts``,
    validated; ``OUTPUT_DIR`` set when ``output_dir`` is given."""
    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(str(config_file))
    merged = (list(TINY_DATA_OPTS) if data_opts else []) + (list(TINY_MODEL_OPTS) if tiny_model else [])
    merged += [str(v) for v in opts]
    if output_dir is not None:
        merged += ["OUTPUT_DIR", str(output_dir)]
    cfg.merge_from_list(merged)
    validate_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """``$JOINDET_CACHE`` for the session (restored afterwards), holding the tiny synthetic splits
    (8 train / 4 val images of 64 x 64), generated once. Yields the cache folder."""
    cache = tmp_path_factory.mktemp("joindet_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("JOINDET_CACHE", str(cache))
    try:
        cfg = build_cfg()
        register_datasets(cfg)
        assert len(DatasetCatalog.get("synth_train")) == 8
        assert len(DatasetCatalog.get("synth_val")) == 4
        yield cache
    finally:
        patch.undo()


@pytest.fixture
def make_cfg(synthetic_cache, tmp_path):
    """``make_cfg(*opts, config_file=..., tiny_model=True)``: a cfg as :func:`build_cfg`, with
    ``OUTPUT_DIR`` under this test's ``tmp_path`` and the tiny synthetic datasets registered."""

    def _make(*opts, config_file=MINI_CONFIG, tiny_model=True):
        cfg = build_cfg(opts, config_file=config_file, output_dir=tmp_path / "output", tiny_model=tiny_model)
        register_datasets(cfg)
        return cfg

    return _make


def mapped_batch(cfg, count, dataset="synth_train", is_train=True):
    """The first ``count`` images of ``dataset`` through ``DetrDatasetMapper`` (a fixed batch;
    ``is_train`` augmentations include a random flip, so seed torch/numpy/random for repeatability)."""
    mapper = DetrDatasetMapper(cfg, is_train=is_train)
    return [mapper(d) for d in DatasetCatalog.get(dataset)[:count]]


@pytest.fixture
def joindet_log(caplog):
    """``caplog`` that captures the 'joindet' logger at INFO, even after an in-process Detectron2
    ``setup_logger(name="joindet")`` (a training run in an earlier test) stopped its propagation."""
    logger = logging.getLogger("joindet")
    attach = not logger.propagate  # else the root logger's capture handler already sees it
    if attach:
        logger.addHandler(caplog.handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)
    logger.setLevel(old_level)


@pytest.fixture
def subprocess_env(synthetic_cache):
    """Environment of a ``train_net.py`` subprocess: the session's ``JOINDET_CACHE`` and one
    OpenMP thread per process (see :func:`one_torch_thread`)."""
    return {**os.environ, "JOINDET_CACHE": str(synthetic_cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_torch_thread():
    """Run the test with one intra-op torch thread, then restore the previous count. On this shared
    2-core machine, two spinning OpenMP threads per process make small models 10x+ slower under
    load; one thread keeps the model and training tests fast and their timing stable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
