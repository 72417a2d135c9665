"""Degenerate supervision: NaN / inf / zero-area / inverted priors and non-finite scores never enter the
prior bank (dropped at the write, counted, logged, stored in meta.json), nor a refresh's output; an image
with no priors trains on no-object targets (losses and gradients finite, also for an all-empty batch);
a non-finite loss stops training with the iteration and the loss names."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.modeling import build_model

from joindet.data.pretrain_mapper import JoinDetDatasetMapper
from joindet.engine.trainer import Trainer
from joindet.priors.active import ActivePriors
from joindet.priors.bank import FILTER_REASONS, PriorBank
from joindet.priors.generation import run_over_images

from conftest import REPO_ROOT, build_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- the bank's write
def test_bank_drops_degenerate_priors_counts_and_stores_the_counts(tmp_path, joindet_log):
    good = [[1, 2, 11, 12], [0, 0, 5, 5], [3, 3, 4, 9]]
    image_a = np.array([good[0], [NAN, 0, 5, 5], good[1], [0, 0, INF, 5], [4, 4, 4, 9]], np.float32)
    scores_a = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)  # rows 1, 3: non-finite box; 4: zero width
    image_b = np.array([[5, 5, 2, 9], good[2], [1, 1, 8, 8]], np.float32)  # row 0: inverted
    scores_b = np.array([0.9, 0.4, NAN], np.float32)  # row 2: non-finite score
    image_c = np.array([[0, 0, 0, 0], [-INF, 0, 1, 1]], np.float32)  # nothing usable: stays, with no priors
    scores_c = np.array([0.3, 0.2], np.float32)
    bank = PriorBank(tmp_path / "bank")
    # image ids out of order: the filter and the sort by id work together
    version = bank.write_version(0, [30, 10, 20], [image_c, image_a, image_b], [scores_c, scores_a, scores_b],
                                 info={"source": "test"})

    assert version.image_ids.tolist() == [10, 20, 30]
    boxes, scores = version.get(10)
    np.testing.assert_array_equal(boxes, np.array(good[:2], np.float32))
    np.testing.assert_array_equal(scores, np.array([0.9, 0.7], np.float32))  # order kept
    boxes, scores = version.get(20)
    np.testing.assert_array_equal(boxes, np.array([good[2]], np.float32))
    np.testing.assert_array_equal(scores, np.array([0.4], np.float32))
    boxes, scores = version.get(30)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert np.isfinite(version.boxes).all() and np.isfinite(version.scores).all()
    assert version.boxes_per_image().tolist() == [2, 1, 0]

    meta = PriorBank(tmp_path / "bank").read(0).meta
    assert meta["filtered_priors"] == {"non_finite_box": 3, "non_finite_score": 1, "empty_or_inverted_box": 3}
    assert set(meta["filtered_priors"]) == set(FILTER_REASONS)
    assert meta["num_boxes"] == 3 and meta["info"] == {"source": "test"}
    (warning,) = [r.getMessage() for r in joindet_log.records if "dropped" in r.getMessage()]
    assert "version 0: dropped 7 of 10 priors (non_finite_box: 3, non_finite_score: 1, empty_or_inverted_box: 3)" \
        in warning

    # a clean version stores zero counts and logs nothing
    joindet_log.clear()
    clean = bank.write_version(1, [10], [np.array(good, np.float32)], [np.ones(3, np.float32)])
    assert clean.meta["filtered_priors"] == dict.fromkeys(FILTER_REASONS, 0) and clean.num_boxes == 3
    assert not [r for r in joindet_log.records if "dropped" in r.getMessage()]


def test_bank_arrays_write_filters_too_and_structural_problems_still_raise(tmp_path):
    bank = PriorBank(tmp_path / "bank")
    boxes = np.array([[0, 0, 2, 2], [1, 1, 1, 3], [0, 0, 3, 3], [0, NAN, 1, 1]], np.float32)
    scores = np.array([1.0, 0.5, INF, 0.2], np.float32)
    version = bank.write_version_arrays(0, np.array([7, 3]), boxes, scores, np.array([0, 2, 4]))
    assert version.image_ids.tolist() == [3, 7]
    assert version.boxes_per_image().tolist() == [0, 1]  # image 3: rows 2 (inf score), 3 (NaN box)
    np.testing.assert_array_equal(version.get(7)[0], [[0, 0, 2, 2]])
    assert version.meta["filtered_priors"] == {"non_finite_box": 1, "non_finite_score": 1, "empty_or_inverted_box": 1}

    with pytest.raises(ValueError, match="same length"):
        bank.write_version(1, [1, 2], [np.zeros((0, 4))], [np.zeros(0)])
    with pytest.raises(ValueError, match="scores of image 1 must have shape"):
        bank.write_version(1, [1], [np.array([[0, 0, NAN, 1]])], [np.zeros(2)])
    with pytest.raises(ValueError, match="offsets must start at 0 and end at the number of boxes"):
        bank.write_version_arrays(1, np.array([1]), boxes, scores, np.array([0, 3]))
    assert bank.versions() == [0]


class _FixedPredictions(nn.Module):
    """A stand-in model for ``run_over_images``: ``fn`` below reads its predictions per image id."""

    def __init__(self, predictions):
        super().__init__()
        self.predictions = predictions


def test_refresh_output_loses_degenerate_priors_before_smoothing(tmp_path, joindet_log):
    """Every refresh generator collects its results through run_over_images: NaN / inverted boxes and
    NaN scores are dropped there (the Box Smooth Module would refuse them), counted and logged."""
    paths = []
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append({"file_name": str(tmp_path / f"{i}.png"), "height": 32, "width": 32, "image_id": i})
    predictions = {
        0: (torch.tensor([[0.0, 0.0, 8.0, 8.0], [NAN, 0.0, 1.0, 1.0]]), torch.tensor([0.9, 0.8])),
        1: (torch.tensor([[4.0, 4.0, 2.0, 9.0], [1.0, 1.0, 6.0, 6.0]]), torch.tensor([0.7, NAN])),
    }
    model = _FixedPredictions(predictions)

    def fn(m, batch):
        return [m.predictions[x["image_id"]] for x in batch]

    def mapper(d):
        return dict(d)  # run_over_images only needs the ids here

    out = run_over_images(model, paths, mapper, fn, batch_size=2, what="test refresh")
    np.testing.assert_array_equal(out[0][0], [[0, 0, 8, 8]])
    np.testing.assert_array_equal(out[0][1], np.array([0.9], np.float32))
    assert out[1][0].shape == (0, 4) and out[1][1].shape == (0,)
    assert any("test refresh: dropped 3 priors (non_finite_box: 1, non_finite_score: 1, empty_or_inverted_box: 1)"
               in r.getMessage() for r in joindet_log.records)


# --------------------------------------------------------------------------- images without priors
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "mini" / "pretrain_synth.yaml"
CROP = 32


@pytest.fixture
def prior_batches(tmp_path):
    """Three 64 x 64 images mapped by JoinDetDatasetMapper (no augmentation): image 0 has two priors,
    image 1 had only degenerate ones (dropped at the bank's write), image 2 none at all."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        records.append({"file_name": str(path), "height": 64, "width": 64, "image_id": i})
    active = ActivePriors(tmp_path / "bank")
    version = active.bank.write_version(
        0, [0, 1, 2],
        [np.array([[4, 4, 40, 36], [20, 10, 60, 60]], np.float32), np.array([[NAN, 1, 9, 9], [9, 9, 3, 3]], np.float32),
         np.zeros((0, 4), np.float32)],
        [np.array([0.9, 0.6], np.float32), np.array([0.5, 0.4], np.float32), np.zeros(0, np.float32)])
    assert version.boxes_per_image().tolist() == [2, 0, 0]
    active.set_version(0)
    mapper = JoinDetDatasetMapper(augmentations=[], image_format="RGB", active_priors=active, crop_size=CROP)
    return [mapper(dict(r)) for r in records]


def _finite_losses_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    for name, value in losses.items():
        assert torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert grads
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
    return losses


# A batch of two images and its first image alone run the network with other batch sizes, whose conv / GEMM
# kernels may block (and so round) differently: float32 results a few ulps apart per operation, over the order
# of a hundred sequential operations (backbone, transformer, heads): 1e-4 relative (~840 float32 ulps). A real
# difference -- the empty image's boxes entering the box losses, or another normaliser -- is O(1).
BATCH_RTOL = 1e-4


@pytest.mark.parametrize("variant", [(), ("MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "True",
                                          "MODEL.DEFORMABLE_DETR.TWO_STAGE", "True")], ids=["plain", "two_stage"])
def test_images_without_priors_train_on_no_object_targets(prior_batches, variant):
    # no dropout, so that a batch's losses can be compared with its images' alone
    cfg = build_cfg(["JOINDET.EMBED_CROP_SIZE", str(CROP), "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "2",
                     "MODEL.DEFORMABLE_DETR.DROPOUT", "0.0", *variant], config_file=PRETRAIN_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    assert [len(x["instances"]) for x in prior_batches] == [2, 0, 0]
    heads = model.class_embed if isinstance(model.class_embed, nn.ModuleList) else [model.class_embed]
    final_head = heads[cfg.MODEL.DEFORMABLE_DETR.DEC_LAYERS - 1 if len(heads) > 1 else 0]  # gives pred_logits

    # the empty image alone: its loss_ce is the sum of its no-object focal terms (num_boxes clamps to 1), > 0,
    # and it trains the objectness head. (At the initial prior probability 0.01 the whole sum is ~1e-6 to 1e-5:
    # next to a loss of ~2 from an image with priors it can fall below float32 resolution, so its presence is
    # checked here, on the image alone, not as mixed > alone.)
    model.zero_grad(set_to_none=True)
    empty_alone = model(prior_batches[1:2])
    assert torch.isfinite(empty_alone["loss_ce"]) and empty_alone["loss_ce"] > 0
    empty_alone["loss_ce"].backward()
    assert final_head.weight.grad is not None and torch.isfinite(final_head.weight.grad).all()
    assert final_head.weight.grad.abs().sum() > 0

    # one image with priors, one without: the box and embedding losses come from the first alone
    mixed = _finite_losses_and_gradients(model, prior_batches[:2])
    alone = model(prior_batches[:1])
    for name in ("loss_bbox", "loss_giou", "loss_embed"):
        assert mixed[name] > 0
        torch.testing.assert_close(mixed[name], alone[name], rtol=BATCH_RTOL, atol=0)
    # loss_ce = focal terms summed over (B, Q, C) / num_boxes, num_boxes = max(the batch's targets, 1): the mixed
    # batch's is the first image's (alone, over the same num_boxes) plus the empty image's sum (empty_alone, over
    # 1) / num_boxes. Tolerance: BATCH_RTOL of the magnitudes summed, plus the rounding of a float32 sum of the
    # B * Q * C non-negative terms in another order (at most one ulp of the total per term).
    num_boxes = len(prior_batches[0]["instances"])
    terms = 2 * cfg.MODEL.DEFORMABLE_DETR.NUM_QUERIES * 1  # B * Q * C: one class, "object"
    want = alone["loss_ce"].detach().double() + empty_alone["loss_ce"].detach().double() / num_boxes
    scale = alone["loss_ce"].detach().double().abs() + empty_alone["loss_ce"].detach().double().abs() / num_boxes
    tolerance = (BATCH_RTOL + terms * torch.finfo(torch.float32).eps) * scale
    assert abs(mixed["loss_ce"].detach().double() - want) <= tolerance, (mixed["loss_ce"], want, tolerance)

    # a batch with no priors at all: only no-object classification, which still trains the objectness head
    empty = _finite_losses_and_gradients(model, prior_batches[1:])
    for name, value in empty.items():
        if name.startswith(("loss_bbox", "loss_giou", "loss_embed")):
            assert value == 0, name
    assert empty["loss_ce"] > 0
    head = heads[-1]
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- a non-finite loss
def test_a_nan_loss_stops_training_naming_the_iteration_and_the_losses(make_cfg):
    """The project's Trainer runs Detectron2's SimpleTrainer, whose _write_metrics raises FloatingPointError
    when the summed losses are not finite (checked every iteration: gather_metric_period 1), before the
    optimizer step: the weights stay finite."""
    cfg = make_cfg("SOLVER.MAX_ITER", "4")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    real_forward = model.forward

    def forward_with_nan_at_iteration_2(batched_inputs):
        losses = real_forward(batched_inputs)
        if trainer.iter == 2:
            losses["loss_giou"] = losses["loss_giou"] * float("nan")
        return losses

    model.forward = forward_with_nan_at_iteration_2
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration=2!") as info:
        trainer.train()
    message = str(info.value)
    assert "'loss_giou': nan" in message and "'loss_ce':" in message and "'loss_bbox':" in message
    assert trainer.iter == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
