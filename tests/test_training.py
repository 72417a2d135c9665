"""Integration tests of training: the loss goes down, checkpoints round-trip, ``train_net.py`` trains,
evaluates and runs two gloo processes on the CPU, the full-scale COCO config builds and steps, and
bad input fails with errors that name it."""

import json
import os
import random
import re

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm

from joindet.data.mapper import DetrDatasetMapper
from joindet.engine.optimizer import build_optimizer
from joindet.engine.common import check_batch_norm_batch
from joindet.engine.trainer import Trainer, build_resumable_train_loader

from conftest import (
    COCO_CONFIG, MINI_CONFIG, MINI_R18_CONFIG, REPO_ROOT, TINY_DATA_OPTS, TINY_MODEL_OPTS, build_cfg, free_port, mapped_batch,
    run_train_net,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# "copypaste: AP,AP50,AP75,APs,APm,APl" then the six numbers (detectron2.evaluation.print_csv_format)
AP_HEADER = re.compile(r"copypaste: AP,AP50,AP75,APs,APm,APl")
AP_VALUES = re.compile(r"copypaste: ((?:-?(?:\d+\.\d+|nan),){5}-?(?:\d+\.\d+|nan))\s*$", re.MULTILINE)


def _seed(seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _ap_values(output):
    """The six bbox AP numbers that ``print_csv_format`` logged (the last evaluation in ``output``)."""
    assert AP_HEADER.search(output), output[-3000:]
    values = AP_VALUES.findall(output)
    assert values, output[-3000:]
    return values[-1].strip()


def _eval_outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return [r["instances"] for r in model(batch)]


def test_loss_decreases_on_a_fixed_batch(make_cfg):
    """The mini model (d 128, 3+3 layers, 50 queries) fits 4 fixed images: AdamW 1e-3 with the
    config's grad clip 0.1, 30 steps. The mean of the last 5 total losses is well below the first 5,
    and so are the box losses alone (L1 + GIoU over all decoder layers), not only the focal loss."""
    cfg = make_cfg("SOLVER.BASE_LR", "0.001", tiny_model=False)
    _seed()
    batch = mapped_batch(cfg, 4)
    assert all(len(x["instances"]) >= 1 for x in batch)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    totals, box_losses = [], []
    for _ in range(30):
        losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
        box_losses.append(sum(v.item() for k, v in losses.items() if k.startswith(("loss_bbox", "loss_giou"))))
    assert np.mean(totals[-5:]) < 0.5 * np.mean(totals[:5]), totals
    assert np.mean(box_losses[-5:]) < 0.8 * np.mean(box_losses[:5]), box_losses


def test_checkpoint_round_trip(make_cfg):
    cfg = make_cfg("DATASETS.TEST", "()", "SOLVER.BASE_LR", "0.001")
    _seed()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER  # the loop ends one past the last iteration
    assert len(trainer.storage.history("total_loss").values()) == cfg.SOLVER.MAX_ITER
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trained = trainer.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # training changed the weights

    trainer.checkpointer.save("round_trip")
    path = os.path.join(cfg.OUTPUT_DIR, "round_trip.pth")
    assert os.path.isfile(path)

    batch = mapped_batch(cfg, 2, dataset="synth_val", is_train=False)
    expected = _eval_outputs(trainer.model, batch)
    fresh = Trainer.build_model(cfg)
    before = _eval_outputs(fresh, batch)
    assert not torch.equal(before[0].scores, expected[0].scores)  # a fresh model differs
    DetectionCheckpointer(fresh).load(path)
    loaded = fresh.state_dict()
    assert set(loaded) == set(trained)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    for got, want in zip(_eval_outputs(fresh, batch), expected):
        assert got.image_size == want.image_size
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
        assert torch.equal(got.scores, want.scores)
        assert torch.equal(got.pred_classes, want.pred_classes)


def test_train_net_trains_then_evaluates_its_checkpoint(subprocess_env, tmp_path):
    out = tmp_path / "run"
    opts = [*TINY_DATA_OPTS, *TINY_MODEL_OPTS, "OUTPUT_DIR", str(out)]
    run = run_train_net(["--config-file", str(MINI_CONFIG), *opts], subprocess_env)
    assert run.returncode == 0, run.stdout[-5000:]
    weights = out / "model_final.pth"
    assert weights.is_file()
    after_training = _ap_values(run.stdout)
    results_file = out / "inference" / "coco_instances_results.json"
    detections = json.loads(results_file.read_text())
    assert 0 < len(detections) <= 4 * 20  # 4 val images, at most NUM_DETECTIONS each
    results_file.unlink()

    run = run_train_net(["--config-file", str(MINI_CONFIG), "--eval-only", *opts, "MODEL.WEIGHTS", str(weights)],
                     subprocess_env)
    assert run.returncode == 0, run.stdout[-5000:]
    assert f"Loading from {weights}" in run.stdout
    assert "Starting training" not in run.stdout
    # the saved weights give exactly the detections and AP of the model that was just trained
    assert json.loads(results_file.read_text()) == detections
    assert _ap_values(run.stdout) == after_training


def test_train_net_two_gloo_processes_on_cpu(subprocess_env, tmp_path):
    out = tmp_path / "ddp"
    run = run_train_net([
        "--config-file", str(MINI_CONFIG), "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
        *TINY_DATA_OPTS, *TINY_MODEL_OPTS, "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3",
        "OUTPUT_DIR", str(out),
    ], subprocess_env)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "World size: 2" in run.stdout
    assert (out / "model_final.pth").is_file()
    _ap_values(run.stdout)  # evaluation gathered from both ranks


def test_full_scale_coco_config_builds_and_trains_two_iterations(make_cfg):
    cfg = make_cfg(
        "DATASETS.TRAIN", "('synth_train',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.MAX_ITER", "2", "SOLVER.EPOCHS", "0.0", "SOLVER.IMS_PER_BATCH", "1",
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
        config_file=COCO_CONFIG, tiny_model=False,
    )
    d = cfg.MODEL.DEFORMABLE_DETR
    assert (d.HIDDEN_DIM, d.NUM_QUERIES, d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_FEATURE_LEVELS) == (256, 300, 6, 6, 4)
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    _seed()
    trainer = Trainer(cfg)
    model = trainer.model
    num_params = sum(p.numel() for p in model.parameters())
    assert 39.0e6 < num_params < 41.5e6, num_params  # Deformable DETR R50: about 40M
    assert len(model.input_proj) == 4 and model.query_embed.weight.shape == (300, 512)
    assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.stem.", "backbone.res2.")) for n in frozen)  # FREEZE_AT 2

    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(np.isfinite(v) for v, _ in history)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(final)
    os.remove(final)  # ~0.5 GB with the optimizer state


def _yacs_config_files():
    """Every shipped yacs config (not the Base- files; not the method lists of the ablation runner's
    ``--methods`` mode, which are YAML lists, e.g. configs/mini/compare_methods.yaml)."""
    import yaml

    return sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml")
                  if not p.name.startswith("Base-") and not isinstance(yaml.safe_load(p.read_text()), list))


@pytest.mark.parametrize("config_file", _yacs_config_files(), ids=lambda p: str(p.relative_to(REPO_ROOT / "configs")))
def test_every_shipped_yaml_config_loads_and_validates(config_file):
    """yacs checks value types: e.g. ``SOLVER.EPOCHS: 50`` (an int) against the float default fails."""
    cfg = build_cfg(config_file=config_file, tiny_model=False, data_opts=False)
    assert cfg.MODEL.META_ARCHITECTURE in ("DeformableDETR", "JoinDet")


def _bn_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())


def test_batch_norm_with_one_image_per_process_is_refused():
    net = _bn_net().train()
    with pytest.raises(ValueError, match=r"SOLVER\.IMS_PER_BATCH = 2 on 2 process\(es\) gives 1 image.*'1'.*"
                                         r"MODEL\.RESNETS\.NORM"):
        check_batch_norm_batch(net, total_batch_size=2, world_size=2)
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH >= 2"):
        check_batch_norm_batch(net, total_batch_size=1, world_size=1)
    check_batch_norm_batch(net, total_batch_size=4, world_size=2)  # 2 images per process: trains
    check_batch_norm_batch(net.eval(), total_batch_size=1, world_size=1)  # BN in eval mode: frozen statistics
    frozen = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4)).train()
    check_batch_norm_batch(frozen, total_batch_size=1, world_size=1)
    synced = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), NaiveSyncBatchNorm(4)).train()
    check_batch_norm_batch(synced, total_batch_size=2, world_size=2)  # statistics over both processes
    with pytest.raises(ValueError, match="1 image per process"):
        check_batch_norm_batch(synced, total_batch_size=1, world_size=1)  # nothing to sync with
    with pytest.raises(ValueError, match=r"dataloader\.train\.total_batch_size"):
        check_batch_norm_batch(net.train(), 1, 1, batch_key="dataloader.train.total_batch_size")


def test_trainable_batch_norm_with_one_image_fails_at_start_up(make_cfg):
    """The combination that used to die mid-run (a 1x1 res5 map of a small crop, trainable BN, one image
    per process) is refused when the trainer is built, before any iteration."""
    cfg = make_cfg("SOLVER.IMS_PER_BATCH", "1", config_file=MINI_R18_CONFIG)
    assert cfg.MODEL.RESNETS.NORM == "BN"
    with pytest.raises(ValueError, match=r"MODEL\.RESNETS\.NORM.*'FrozenBN'"):
        Trainer(cfg)
    Trainer(make_cfg("SOLVER.IMS_PER_BATCH", "1", "MODEL.RESNETS.NORM", "FrozenBN", config_file=MINI_R18_CONFIG))
    Trainer(make_cfg("SOLVER.IMS_PER_BATCH", "1"))  # the frozen Lite0 of the mini config: fine too


def test_unknown_training_dataset_is_named(synthetic_cache, tmp_path):
    from joindet.engine.launcher import setup

    args = default_argument_parser().parse_args([
        "--config-file", str(MINI_CONFIG), *TINY_DATA_OPTS,
        "DATASETS.TRAIN", "('synth_train', 'no_such_dataset_xyz')", "OUTPUT_DIR", str(tmp_path / "output"),
    ])
    with pytest.raises(ValueError, match=r"no_such_dataset_xyz.*DATASETS\.TRAIN"):
        setup(args)


def test_undecodable_image_is_skipped_with_its_name_and_an_all_bad_set_is_an_error(make_cfg, tmp_path, joindet_log):
    broken = tmp_path / "broken_image_0001.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a JPEG " + bytes(range(256)) * 4)
    name = "joindet_test_broken_images"
    record = {
        "file_name": str(broken), "height": 64, "width": 64, "image_id": 1,
        "annotations": [{"bbox": [4, 4, 20, 20], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}],
    }
    DatasetCatalog.register(name, lambda: [dict(record)])
    MetadataCatalog.get(name).set(thing_classes=["thing"])
    try:
        cfg = make_cfg("DATASETS.TRAIN", f"('{name}',)")
        dataset_dict = DatasetCatalog.get(name)[0]
        for is_train in (True, False):  # one bad file: skipped (None), its name in the log
            joindet_log.clear()
            assert DetrDatasetMapper(cfg, is_train=is_train)(dict(dataset_dict)) is None
            assert "broken_image_0001.jpg" in joindet_log.text
        # through the Trainer's training loader: every image of the set is unusable, a clear error
        loader, _ = build_resumable_train_loader(cfg, DetrDatasetMapper(cfg, is_train=True, num_images=1),
                                                 dataset=DatasetCatalog.get(name))
        with pytest.raises(RuntimeError) as info:
            next(iter(loader))
        assert name in str(info.value) or "broken_image_0001.jpg" in str(info.value)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
