"""Integration tests of JoinDet pretraining: prior refreshes publish complete bank versions that the
data loader serves at once, the version in use is checkpointed and restored by ``--resume``, an image
on which NCut finds nothing keeps its priors, two gloo processes build a complete bank, the paper's
pretraining config builds the full model and steps on the CPU, and bad settings fail at start-up."""

import os
import shutil

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

import joindet.priors.refresh as refresh_module
from joindet.data.datasets import register_datasets
from joindet.engine.pretrain import JoinDetTrainer, bank_dir
from joindet.priors.bank import PriorBank
from joindet.priors.box_smooth import BoxSmoothSettings, smooth_priors
from joindet.priors.random_crops import RandomCropSource

from conftest import REPO_ROOT, TINY_DATA_OPTS, TINY_MODEL_OPTS, build_cfg, free_port, run_train_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRETRAIN_CONFIG = REPO_ROOT / "configs" / "mini" / "pretrain_synth.yaml"
FULL_PRETRAIN_CONFIG = REPO_ROOT / "configs" / "pretrain.yaml"
DATASET = "synth_train_unlabeled"
HOOK_KEY = "PriorRefreshHook"  # TrainerBase.state_dict keys hook states by the class's __qualname__

# The mini pretraining config shrunk further (on top of conftest's TINY_DATA_OPTS / TINY_MODEL_OPTS):
# 64 px LSJ, 1+1 layers, 32 px crops, random-crop version 0, NCut on the stride-8 level (8 x 8 patches).
TINY_PRETRAIN_OPTS = [
    "DATASETS.TRAIN", f"('{DATASET}',)",
    "DATASETS.TEST", "()",
    "JOINDET.LSJ.IMAGE_SIZE", "64",
    "JOINDET.EMBED_CROP_SIZE", "32",
    "JOINDET.PRIORS.INIT_SOURCE", "random_crops",
    "JOINDET.PRIORS.NUM_WORKERS", "0",
    "JOINDET.PRIORS.TOPK", "10",
    "JOINDET.NCUT.FEATURE_LEVEL", "0",
    "JOINDET.NCUT.BATCH_SIZE", "4",
    "JOINDET.REFRESH.BATCH_SIZE", "4",  # (the detector and rescore refreshes; the mini config has 8)
    "JOINDET.REFRESH.GENERATOR", "ncut_encoder",  # the paper's refresh (the mini config refreshes by rescore)
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1",
    "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "1",
]

# The two-refresh run: 6 iterations, refreshes after iterations 2 and 4 (1-based), a checkpoint after
# iteration 3 (between them) and at the end; the merge with Soft-NMS of its scores.
RUN_OPTS = ["SOLVER.MAX_ITER", "6", "JOINDET.UPDATE_PERIOD_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "3",
            "JOINDET.SMOOTH.SOFT_NMS_SIGMA", "0.5"]
EMPTY_IMAGE_ID = 3  # the image on which the patched NCut finds nothing


def _pretrain_cfg(output_dir, *opts):
    cfg = build_cfg([*TINY_PRETRAIN_OPTS, *opts], config_file=PRETRAIN_CONFIG, output_dir=output_dir)
    register_datasets(cfg)
    return cfg


def _dataset_ids():
    return sorted(d["image_id"] for d in DatasetCatalog.get(DATASET))


def _record_served_versions(trainer):
    """Wrap the model's forward so that every training batch's ``prior_version``s are recorded as
    (iteration, [versions]) in the returned list."""
    served = []
    model = trainer.model
    forward = model.forward

    def recording_forward(batched_inputs):
        served.append((trainer.iter, [x["prior_version"] for x in batched_inputs]))
        return forward(batched_inputs)

    model.forward = recording_forward
    return served


def _checkpoint_version(path):
    return torch.load(path, map_location="cpu", weights_only=False)["trainer"]["hooks"][HOOK_KEY]["version"]


@pytest.fixture(scope="module")
def refresh_run(synthetic_cache, tmp_path_factory):
    """The two-refresh run, once per module, with ``generate_ncut_priors`` wrapped so that it finds
    nothing on image ``EMPTY_IMAGE_ID`` (its real results are recorded per refresh).

    Returns a dict: cfg, trainer, served [(iteration, versions)], ncut [dict image_id -> (boxes,
    scores) per refresh, as the hook received them]."""
    output = tmp_path_factory.mktemp("pretrain_run")
    cfg = _pretrain_cfg(output, *RUN_OPTS)
    real = refresh_module.generate_ncut_priors
    ncut = []

    def ncut_finding_nothing_on_one_image(*args, **kwargs):
        result = dict(real(*args, **kwargs))
        if EMPTY_IMAGE_ID in result:
            result[EMPTY_IMAGE_ID] = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        ncut.append(result)
        return result

    patch = pytest.MonkeyPatch()
    patch.setattr(refresh_module, "generate_ncut_priors", ncut_finding_nothing_on_one_image)
    try:
        torch.manual_seed(0)
        np.random.seed(0)
        trainer = JoinDetTrainer(cfg)
        trainer.resume_or_load(resume=False)
        served = _record_served_versions(trainer)
        trainer.train()
    finally:
        patch.undo()
    return {"cfg": cfg, "trainer": trainer, "served": served, "ncut": ncut}


def test_two_refreshes_publish_complete_versions_that_the_loader_serves(refresh_run):
    cfg, trainer = refresh_run["cfg"], refresh_run["trainer"]
    bank = PriorBank(bank_dir(cfg))
    assert bank.versions() == [0, 1, 2]
    ids = _dataset_ids()
    assert len(ids) == 8
    for v in (0, 1, 2):
        version = bank.read(v)
        assert version.image_ids.tolist() == ids  # every image of the set has an entry
        assert version.meta["num_images"] == 8 and version.meta["version"] == v
        assert version.boxes_per_image().min() >= 1 and version.boxes_per_image().max() <= 10  # TOPK
    assert bank.read(0).meta["info"]["source"] == "random_crops"
    assert [bank.read(v).meta["info"]["iteration"] for v in (1, 2)] == [2, 4]
    assert trainer.active_priors.version == 2

    # every batch carries the version published before it: 0 for iterations 0-1, 1 for 2-3, 2 for 4-5
    served = refresh_run["served"]
    assert [it for it, _ in served] == list(range(6))
    assert [versions for _, versions in served] == [[v, v] for v in (0, 0, 1, 1, 2, 2)]
    assert len(refresh_run["ncut"]) == 2  # NCut ran once per refresh, never at the end
    assert trainer.storage.history("priors/version").values()[-1][0] == 2


def test_checkpoints_record_the_version_in_use(refresh_run):
    out = refresh_run["cfg"].OUTPUT_DIR
    assert _checkpoint_version(os.path.join(out, "model_0000002.pth")) == 1  # between the refreshes
    assert _checkpoint_version(os.path.join(out, "model_0000005.pth")) == 2
    assert _checkpoint_version(os.path.join(out, "model_final.pth")) == 2


def test_resume_between_refreshes_continues_with_the_saved_version(refresh_run, tmp_path):
    source = refresh_run["cfg"].OUTPUT_DIR
    copy = tmp_path / "resumed"
    shutil.copytree(source, copy)
    (copy / "last_checkpoint").write_text("model_0000002.pth")
    v1 = PriorBank(copy / "prior_bank").read(1)
    v1_before = {i: v1.get(i) for i in _dataset_ids()}

    cfg = _pretrain_cfg(copy, *RUN_OPTS)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    assert trainer.active_priors.version == 1  # restored from the checkpoint, not the bank's latest (2)
    served = _record_served_versions(trainer)
    trainer.train()
    # iteration 3 trains on version 1; the refresh after it rewrites version 2, served by 4 and 5
    assert [it for it, _ in served] == [3, 4, 5]
    assert [versions for _, versions in served] == [[1, 1], [2, 2], [2, 2]]
    assert PriorBank(copy / "prior_bank").versions() == [0, 1, 2]
    v1 = PriorBank(copy / "prior_bank").read(1)
    for i, (boxes, scores) in v1_before.items():  # the supervision it resumed with was left alone
        np.testing.assert_array_equal(v1.get(i)[0], boxes)
        np.testing.assert_array_equal(v1.get(i)[1], scores)


def test_an_image_without_ncut_priors_keeps_its_previous_ones(refresh_run):
    cfg = refresh_run["cfg"]
    bank = PriorBank(bank_dir(cfg))
    s = cfg.JOINDET.SMOOTH
    for refresh, current in enumerate(refresh_run["ncut"]):
        previous, new = bank.read(refresh), bank.read(refresh + 1)
        assert sorted(current) == _dataset_ids()
        empty = [i for i, (boxes, _) in current.items() if len(boxes) == 0]
        assert EMPTY_IMAGE_ID in empty and len(empty) < len(current)
        assert new.meta["info"]["images_kept_previous"] == len(empty)
        assert new.meta["info"]["soft_nms_sigma"] == s.SOFT_NMS_SIGMA == 0.5
        assert new.meta["info"]["rule"] == s.RULE == "box_smooth" and new.meta["info"]["min_score"] == 0.0
        for image_id, (boxes, scores) in current.items():
            old_boxes, old_scores = previous.get(image_id)
            got_boxes, got_scores = new.get(image_id)
            if len(boxes) == 0:  # NCut found nothing: the previous priors, unchanged
                np.testing.assert_array_equal(got_boxes, old_boxes)
                np.testing.assert_array_equal(got_scores, old_scores)
                assert len(got_boxes) > 0
            else:  # the Box Smooth Module's merge of the previous and the current priors
                settings = BoxSmoothSettings(momentum=s.MOMENTUM, iou_threshold=s.IOU_THRESHOLD,
                                             topk=cfg.JOINDET.PRIORS.TOPK, soft_nms_sigma=s.SOFT_NMS_SIGMA)
                want_boxes, want_scores = smooth_priors(old_boxes, old_scores, boxes, scores, settings)
                np.testing.assert_allclose(got_boxes, want_boxes, rtol=0, atol=1e-4)
                np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-6)


def test_two_gloo_processes_build_a_complete_bank(subprocess_env, tmp_path):
    out = tmp_path / "ddp"
    run = run_train_net(
        ["--config-file", str(PRETRAIN_CONFIG),
         "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
         *TINY_DATA_OPTS, *TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS,
         "JOINDET.PRIORS.INIT_SOURCE", "selective_search", "JOINDET.PRIORS.MIN_SIDE", "64",
         "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "JOINDET.UPDATE_PERIOD_ITERS", "2",
         "OUTPUT_DIR", str(out)],
        subprocess_env,
    )
    assert run.returncode == 0, run.stdout[-5000:]
    bank = PriorBank(out / "prior_bank")
    assert bank.versions() == [0, 1]
    ids = _dataset_ids()
    for v in (0, 1):
        version = bank.read(v)
        assert version.image_ids.tolist() == ids  # both ranks' shards, gathered
        assert version.meta["num_images"] == len(ids) == 8
        assert version.meta["num_boxes"] == int(version.boxes_per_image().sum()) > 0
    assert bank.read(0).meta["info"]["source"] == "selective_search"
    assert bank.read(1).meta["info"]["iteration"] == 2
    assert _checkpoint_version(out / "model_final.pth") == 1
    assert "Prior bank version 1 at iteration 2" in run.stdout


def test_paper_pretraining_config_builds_the_full_model_and_steps(synthetic_cache, tmp_path):
    cfg = build_cfg([
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()",
        "JOINDET.LSJ.IMAGE_SIZE", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.MAX_ITER", "2", "SOLVER.EPOCHS", "0.0", "SOLVER.IMS_PER_BATCH", "1",
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
    ], config_file=FULL_PRETRAIN_CONFIG, output_dir=tmp_path / "output", tiny_model=False)
    register_datasets(cfg)
    d = cfg.MODEL.DEFORMABLE_DETR
    assert (d.HIDDEN_DIM, d.NUM_QUERIES, d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_FEATURE_LEVELS) == (256, 300, 6, 6, 4)
    assert cfg.JOINDET.PRIORS.INIT_SOURCE == "ncut_backbone" and cfg.JOINDET.EMBED_DIM == 2048
    torch.manual_seed(0)
    trainer = JoinDetTrainer(cfg)
    model = trainer.model
    assert type(model).__name__ == "JoinDet" and model.embed_encoder is None  # targets from the backbone
    assert not any(p.requires_grad for p in model.backbone.parameters())  # FREEZE_AT 5: all frozen
    assert len(model.input_proj) == 4 and model.query_embed.weight.shape == (300, 512)
    assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6
    assert model.embed_head.layers[-1].out_features == 2048
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("backbone.") for n in trainable)

    trainer.resume_or_load(resume=False)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(np.isfinite(v) for v, _ in history)
    assert "loss_embed" in trainer.storage.histories()
    assert all(torch.equal(backbone_before[k], v) for k, v in model.backbone.state_dict().items())
    bank = PriorBank(bank_dir(cfg))
    assert bank.versions() == [0] and bank.read(0).meta["info"]["source"] == "ncut_backbone"
    assert bank.read(0).image_ids.tolist() == _dataset_ids()  # complete, even where NCut found nothing
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(final)
    os.remove(final)  # hundreds of MB with the optimizer state

    # NCut on a randomly initialised R50 (no SwAV file here) may find no object (docs/design.md, "Version 0
    # without a pretrained backbone"), so the full-size losses are checked once more on random-crop priors
    # served by the same loader
    dicts = DatasetCatalog.get(DATASET)
    crops = RandomCropSource(topk=5, seed=0)(dicts)
    bank.write_version(1, [d["image_id"] for d in dicts], [b for b, _ in crops], [s for _, s in crops])
    trainer.active_priors.set_version(1)
    batch = next(iter(trainer.data_loader))
    assert [x["prior_version"] for x in batch] == [1]
    assert len(batch[0]["instances"]) >= 1 and batch[0]["prior_crops"].shape[1:] == (3, 128, 128)
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_embed"] > 0 and losses["loss_bbox"] > 0
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert model.embed_head.layers[0].weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())


def _setup_args(tmp_path, *opts):
    return default_argument_parser().parse_args([
        "--config-file", str(PRETRAIN_CONFIG), *TINY_DATA_OPTS, *TINY_PRETRAIN_OPTS, *opts,
        "OUTPUT_DIR", str(tmp_path / "output"),
    ])


@pytest.mark.parametrize("key,value,pattern", [
    ("JOINDET.SMOOTH.MOMENTUM", "1.5", r"JOINDET\.SMOOTH\.MOMENTUM"),
    ("JOINDET.SMOOTH.IOU_THRESHOLD", "0.0", r"JOINDET\.SMOOTH\.IOU_THRESHOLD"),
    ("JOINDET.NCUT.TAU", "2.0", r"JOINDET\.NCUT\.TAU"),
    ("JOINDET.UPDATE_PERIOD", "-1.0", r"JOINDET\.UPDATE_PERIOD\b"),
])
def test_bad_joindet_value_is_named_at_setup(synthetic_cache, tmp_path, key, value, pattern):
    from joindet.engine.launcher import setup

    with pytest.raises(ValueError, match=pattern):
        setup(_setup_args(tmp_path, key, value))


def test_empty_image_folder_is_named_at_setup(synthetic_cache, tmp_path):
    from joindet.engine.launcher import setup

    folder = tmp_path / "no_images_here"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    name = "joindet_test_empty_folder"
    try:
        with pytest.raises(ValueError, match=str(folder)):
            setup(_setup_args(tmp_path, "DATASETS.IMAGE_FOLDERS", f"('{name}={folder}',)",
                              "DATASETS.TRAIN", f"('{name}',)"))
    finally:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)


def test_frozen_copy_embedding_encoder_follows_the_loaded_backbone_then_stays(synthetic_cache, tmp_path):
    """With a backbone that trains (the R18 from scratch), EMBED_ENCODER "frozen_copy" takes the backbone's
    weights at the start of a fresh run and never changes; the backbone trains."""
    cfg = _pretrain_cfg(tmp_path / "out", "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.FREEZE_AT", "0",
                        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "BN",
                        "JOINDET.EMBED_DIM", "512", "JOINDET.EMBED_ENCODER", "frozen_copy", "SOLVER.MAX_ITER", "2")
    trainer = JoinDetTrainer(cfg)
    model = trainer.model
    with torch.no_grad():  # make the backbone differ from the copy made at construction
        for p in model.backbone.parameters():
            p.add_(0.01)
    trainer.resume_or_load(resume=False)
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert all(torch.equal(model.embed_encoder.state_dict()[k], v) for k, v in start.items())
    trainer.train()
    encoder = model.embed_encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in start.items())  # frozen: weights and BN statistics
    assert not torch.equal(model.backbone.stem.conv1.weight, start["stem.conv1.weight"])  # the backbone trained
