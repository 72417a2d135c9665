"""Integration tests of the DeformableDETR meta-architecture built from yacs configs: losses and
gradients in training, Instances at inference, devices and buffers, and config validation."""

import math

import pytest
import torch

from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from joindet.config import validate_config

from conftest import MINI_CONFIG, MINI_R18_CONFIG, TINY_IMAGE_SIZE, build_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 6  # the mini config's synthetic classes

# (IN_FEATURES, NUM_FEATURE_LEVELS): single-scale, multi-scale from 3 levels, and 3 + 1 extra level.
SCALES = {
    "single": ("['res5']", 1),
    "multi3": ("['res3', 'res4', 'res5']", 3),
    "multi4": ("['res3', 'res4', 'res5']", 4),
}
VARIANTS = {"plain": (False, False), "refine": (True, False), "two_stage": (True, True)}


def _model(scale, variant, *opts, config_file=MINI_CONFIG):
    in_features, levels = SCALES[scale]
    refine, two_stage = VARIANTS[variant]
    cfg = build_cfg(config_file=config_file, opts=[
        "MODEL.DEFORMABLE_DETR.IN_FEATURES", in_features,
        "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", levels,
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", refine,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE", two_stage,
        *opts,
    ])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_frozen_timm_backbone_gets_no_gradient_and_everything_else_does():
    cfg, model = _model("multi3", "plain")  # the mini config: frozen ImageNet Lite0
    assert type(model.backbone).__name__ == "TimmBackbone"
    model.train()
    assert not model.backbone.training  # frozen: BatchNorm statistics stay fixed
    sum(model(_inputs(2)).values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    unused = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not unused, unused


def _inputs(count=2, size=TINY_IMAGE_SIZE, original=None, seed=0):
    """``count`` random uint8 images (3, size, size) with two or three ground-truth boxes each (XYXY in
    the tensor's pixels); ``original`` = (height, width) adds the original image size."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(count):
        n = 2 + i % 2
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = 4 + torch.rand(n, 2, generator=gen) * size * 0.35
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        item = {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen), "instances": inst}
        if original is not None:
            item["height"], item["width"] = original
        batch.append(item)
    return batch


def _expected_loss_keys(dec_layers, two_stage):
    base = ["loss_ce", "loss_bbox", "loss_giou"]
    keys = set(base)
    keys.update(f"{k}_{i}" for i in range(dec_layers - 1) for k in base)
    if two_stage:
        keys.update(f"{k}_enc" for k in base)
    return keys


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("scale", sorted(SCALES))
def test_train_losses_gradients_and_inference(scale, variant):
    cfg, model = _model(scale, variant, config_file=MINI_R18_CONFIG)  # a trainable backbone: gradients reach it
    d = cfg.MODEL.DEFORMABLE_DETR
    assert model.transformer.level_embed.shape == (SCALES[scale][1], 64)
    assert len(model.input_proj) == SCALES[scale][1]

    # ---- training: finite scalar weighted losses with exactly the expected names
    model.train()
    losses = model(_inputs(2))
    assert set(losses) == _expected_loss_keys(d.DEC_LAYERS, d.TWO_STAGE)
    for name, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        assert value.item() >= 0, name
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    groups = {
        "backbone stem": model.backbone.stem, "backbone res5": model.backbone.res5,
        "input projections": model.input_proj, "encoder": model.transformer.encoder,
        "decoder layers": model.transformer.decoder.layers, "class heads": model.class_embed,
        "box heads": model.bbox_embed,
    }
    for name, module in groups.items():
        params = list(module.parameters())
        assert params, name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"no gradient reaches the {name}"
    # (transformer.level_embed only reaches the loss through the sampling-offset and attention-weight
    # projections, whose weights start at zero: its first gradient is exactly zero, but it exists.)
    # Every trainable parameter takes part (DDP without find_unused_parameters relies on it).
    unused = sorted(n for n, g in grads.items() if g is None)
    assert not unused, unused

    # ---- inference: Instances in the original image size, scaled boxes, sorted scores
    model.eval()
    with torch.no_grad():
        plain = model(_inputs(2, seed=1))
        doubled = model(_inputs(2, seed=1, original=(2 * TINY_IMAGE_SIZE, 2 * TINY_IMAGE_SIZE)))
        wide = model(_inputs(1, seed=1, original=(TINY_IMAGE_SIZE, 3 * TINY_IMAGE_SIZE)))
        single = model(_inputs(1, seed=1))  # plain's first image in a batch of one, as wide runs it
    assert len(plain) == len(doubled) == 2 and len(wide) == 1
    for out, size in ((plain, TINY_IMAGE_SIZE), (doubled, 2 * TINY_IMAGE_SIZE)):
        for result in out:
            assert set(result) == {"instances"}
            inst = result["instances"]
            assert inst.image_size == (size, size)
            assert 1 <= len(inst) <= d.NUM_DETECTIONS
            boxes, scores, classes = inst.pred_boxes.tensor, inst.scores, inst.pred_classes
            assert boxes.shape == (len(inst), 4) and torch.isfinite(boxes).all()
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all()
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            assert ((scores >= 0) & (scores <= 1)).all()
            assert torch.all(scores[:-1] >= scores[1:])
            assert classes.dtype == torch.int64
            assert ((classes >= 0) & (classes < NUM_CLASSES)).all()
    for a, b in zip(plain, doubled):
        a, b = a["instances"], b["instances"]
        torch.testing.assert_close(b.pred_boxes.tensor, 2 * a.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
    # a non-square original size scales x and y separately. Compared with the same image in a batch of one (the
    # network's identical computation), not with plain's batch of two, whose kernels may round differently.
    w = wide[0]["instances"]
    assert w.image_size == (TINY_IMAGE_SIZE, 3 * TINY_IMAGE_SIZE)
    a = single[0]["instances"].pred_boxes.tensor
    torch.testing.assert_close(w.pred_boxes.tensor, a * torch.tensor([3.0, 1.0, 3.0, 1.0]))


@pytest.mark.parametrize("variant", ["plain", "two_stage"])
def test_batch_of_different_sizes_is_padded_and_each_result_keeps_its_size(variant):
    """A landscape and a portrait image in one batch (padded to 96 x 96): finite losses, and each
    result has its own image size with its boxes inside it."""
    cfg, model = _model("multi4", variant)
    batch = _inputs(1, seed=4) + _inputs(1, seed=5)
    batch[0]["image"] = batch[0]["image"].repeat(1, 1, 2)[:, :, :96]  # (3, 64, 96)
    batch[1]["image"] = batch[1]["image"].repeat(1, 2, 1)[:, :96, :]  # (3, 96, 64)
    batch[0]["instances"]._image_size = (64, 96)
    batch[1]["instances"]._image_size = (96, 64)
    images, mask = model.preprocess_image(batch)
    assert images.tensor.shape[-2:] == (96, 96) and images.image_sizes == [(64, 96), (96, 64)]
    assert mask[0, 64:].all() and not mask[0, :64].any() and mask[1, :, 64:].all() and not mask[1, :, :64].any()

    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        results = model(batch)
    for result, (h, w) in zip(results, [(64, 96), (96, 64)]):
        inst = result["instances"]
        assert inst.image_size == (h, w) and len(inst) >= 1
        boxes = inst.pred_boxes.tensor
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()


def test_inference_boxes_match_the_normalised_predictions():
    """The top detection is the top (query, class) logit, its box that query's cxcywh box times the
    original size, computed here independently of postprocess."""
    cfg, model = _model("multi3", "plain")
    model.eval()
    batch = _inputs(1, seed=3, original=(100, 150))
    with torch.no_grad():
        out = model.forward_outputs(*model.preprocess_image(batch))
        inst = model(batch)[0]["instances"]
    prob = out["pred_logits"][0].sigmoid()  # (Q, C)
    q, c = divmod(int(prob.argmax()), NUM_CLASSES)
    cx, cy, bw, bh = out["pred_boxes"][0, q].tolist()
    expected = torch.tensor([
        max(0.0, (cx - bw / 2)) * 150, max(0.0, (cy - bh / 2)) * 100,
        min(1.0, (cx + bw / 2)) * 150, min(1.0, (cy + bh / 2)) * 100,
    ])
    assert math.isclose(inst.scores[0].item(), prob.max().item(), rel_tol=1e-6)
    assert inst.pred_classes[0].item() == c
    torch.testing.assert_close(inst.pred_boxes.tensor[0], expected, rtol=1e-5, atol=1e-3)


def test_two_stage_without_box_refine_is_rejected():
    with pytest.raises(ValueError, match="WITH_BOX_REFINE"):
        build_cfg(["MODEL.DEFORMABLE_DETR.TWO_STAGE", True, "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", False])
    cfg = build_cfg()
    cfg.MODEL.DEFORMABLE_DETR.TWO_STAGE = True  # bypass validate_config: the model checks it too
    with pytest.raises(ValueError, match="with_box_refine"):
        build_model(cfg)


def test_pixel_statistics_are_buffers_and_device_follows_to():
    cfg, model = _model("single", "plain")
    buffers = dict(model.named_buffers())
    params = dict(model.named_parameters())
    for name, values in (("pixel_mean", cfg.MODEL.PIXEL_MEAN), ("pixel_std", cfg.MODEL.PIXEL_STD)):
        assert name in buffers and name not in params
        torch.testing.assert_close(buffers[name].flatten(), torch.tensor(values))
        assert buffers[name].shape == (3, 1, 1)
    assert model.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())

    model = model.to("meta")  # a second device without a GPU: allocation-free
    assert model.device == torch.device("meta")
    assert model.pixel_mean.device.type == "meta" and model.pixel_std.device.type == "meta"
    others = [n for n, p in model.named_parameters() if p.device.type != "meta"]
    others += [n for n, b in model.named_buffers() if b.device.type != "meta"]
    assert not others, others


def test_num_queries_must_be_positive(tmp_path):
    from joindet.engine.launcher import setup

    cfg = build_cfg()
    cfg.MODEL.DEFORMABLE_DETR.NUM_QUERIES = -1
    with pytest.raises(ValueError, match=r"MODEL\.DEFORMABLE_DETR\.NUM_QUERIES"):
        validate_config(cfg)

    args = default_argument_parser().parse_args([
        "--config-file", str(MINI_CONFIG),
        "OUTPUT_DIR", str(tmp_path / "output"),
        "MODEL.DEFORMABLE_DETR.NUM_QUERIES", "-1",
    ])
    with pytest.raises(ValueError, match=r"MODEL\.DEFORMABLE_DETR\.NUM_QUERIES"):
        setup(args)
    assert not (tmp_path / "output").exists()  # rejected before anything was written
