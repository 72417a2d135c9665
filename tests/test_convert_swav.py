"""SwAV -> Detectron2 backbone conversion: a torchvision ResNet-50 with random weights and BatchNorm
statistics, saved in SwAV's layout, must give the same res5 features in Detectron2's ResNet-50."""
import os
import subprocess
import sys

import pytest
import torch
from torchvision.models import resnet18, resnet50

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from joindet.checkpoint import classify_checkpoint_keys
from joindet.tools.convert_swav import AUTHOR, convert_swav_checkpoint, convert_swav_state_dict, main


def _randomise_bn(model, generator):
    """Random affine parameters and running statistics in every BatchNorm (eval mode uses them)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=generator) * 0.5 + 0.5
            m.bias.data = torch.randn(c, generator=generator) * 0.1
            m.running_mean = torch.randn(c, generator=generator) * 0.1
            m.running_var = torch.rand(c, generator=generator) * 1.5 + 0.5


@pytest.fixture(scope="module")
def tv_resnet50():
    torch.manual_seed(0)
    model = resnet50()
    _randomise_bn(model, torch.Generator().manual_seed(1))
    return model.eval()


def _swav_layout(model):
    """SwAV's training-checkpoint layout: DDP prefix, heads, other top-level entries."""
    state = {"module." + k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.randn(16, 2048)
    state["module.projection_head.0.bias"] = torch.randn(16)
    state["module.prototypes.weight"] = torch.randn(30, 16)
    return {"epoch": 800, "state_dict": state}


@pytest.fixture(scope="module")
def swav_file(tv_resnet50, tmp_path_factory):
    path = tmp_path_factory.mktemp("swav") / "swav_800ep_pretrain.pth.tar"
    torch.save(_swav_layout(tv_resnet50), path)
    return path


def _d2_resnet50():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_converted_backbone_matches_torchvision(tv_resnet50, swav_file, tmp_path):
    out = tmp_path / "swav_r50_d2.pth"
    summary = convert_swav_checkpoint(swav_file, out)
    assert sorted(summary["dropped"]) == sorted(
        ["module.projection_head.0.bias", "module.projection_head.0.weight", "module.prototypes.weight"]
        + [f"module.{k}" for k in tv_resnet50.state_dict() if k.endswith("num_batches_tracked")]
    )

    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["__author__"] == AUTHOR and saved["matching_heuristics"] is False
    model_state = saved["model"]
    assert len(model_state) == 265 and all(k.startswith("backbone.") for k in model_state)
    tv_state = tv_resnet50.state_dict()
    for d2_name, tv_name in [
        ("backbone.stem.conv1.weight", "conv1.weight"),
        ("backbone.stem.conv1.norm.running_var", "bn1.running_var"),
        ("backbone.res2.0.shortcut.weight", "layer1.0.downsample.0.weight"),
        ("backbone.res2.0.shortcut.norm.running_mean", "layer1.0.downsample.1.running_mean"),
        ("backbone.res4.5.conv2.norm.weight", "layer3.5.bn2.weight"),
        ("backbone.res5.2.conv3.weight", "layer4.2.conv3.weight"),
    ]:
        assert torch.equal(model_state[d2_name], tv_state[tv_name]), d2_name

    backbone = _d2_resnet50().eval()
    # A backbone-only checkpoint for JoinDetCheckpointer: no missing backbone keys, nothing else.
    detector_like_state = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    keys = classify_checkpoint_keys(model_state, detector_like_state, is_pretrain_model=False)
    assert keys["kind"] == "backbone"
    assert keys["missing"] == [] and keys["unexpected"] == [] and keys["mismatched"] == []
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in model_state.items()}, strict=True)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = backbone(x)
        t = tv_resnet50.maxpool(tv_resnet50.relu(tv_resnet50.bn1(tv_resnet50.conv1(x))))
        t = tv_resnet50.layer1(t)
        expected_res2 = t
        expected_res5 = tv_resnet50.layer4(tv_resnet50.layer3(tv_resnet50.layer2(t)))
    assert features["res5"].shape == (2, 2048, 2, 2)
    assert expected_res5.abs().max() > 1e-2  # not a degenerate all-zero comparison
    torch.testing.assert_close(features["res2"], expected_res2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features["res5"], expected_res5, rtol=1e-4, atol=1e-4)


def test_bare_state_dict_is_accepted(tv_resnet50):
    bare = {k: v for k, v in tv_resnet50.state_dict().items()}  # with fc.*, without module.
    converted = convert_swav_state_dict(bare)
    assert "backbone.res3.3.conv3.norm.bias" in converted and not any(".fc." in k for k in converted)
    assert torch.equal(converted["backbone.res3.3.conv3.norm.bias"], bare["layer2.3.bn3.bias"])


def test_bad_state_dicts_raise(tv_resnet50):
    with pytest.raises(ValueError, match="none of its layer keys"):
        convert_swav_state_dict({"foo": torch.zeros(3), "bar": torch.ones(2)})
    partial = {k: v for k, v in tv_resnet50.state_dict().items() if k != "layer3.2.conv1.weight"}
    with pytest.raises(ValueError, match=r"missing ResNet-50 keys: layer3\.2\.conv1\.weight"):
        convert_swav_state_dict(partial)
    with pytest.raises(ValueError, match="not a ResNet-50 state dict.*shape other than ResNet-50's"):
        convert_swav_state_dict(resnet18().state_dict())
    extra = dict(tv_resnet50.state_dict())
    extra["layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # a ResNet-101 block
    with pytest.raises(ValueError, match=r"unexpected keys: layer3\.6\.conv1\.weight"):
        convert_swav_state_dict(extra)
    with pytest.raises(ValueError, match="not a tensor"):
        convert_swav_state_dict({**tv_resnet50.state_dict(), "layer1.0.conv1.weight": [1, 2]})


def test_bad_files_and_overwrite(swav_file, tmp_path, capsys):
    text = tmp_path / "notes.pth.tar"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot load .* as a PyTorch checkpoint"):
        convert_swav_checkpoint(text, tmp_path / "a.pth")
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(ValueError, match="not a checkpoint dict"):
        convert_swav_checkpoint(a_list, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="no such file"):
        convert_swav_checkpoint(tmp_path / "absent.pth", tmp_path / "c.pth")
    assert not any(p.name.startswith((".a.pth", ".b.pth", "a.pth", "b.pth")) for p in tmp_path.iterdir())

    out = tmp_path / "out.pth"
    out.write_bytes(b"keep me")
    assert main([str(swav_file), str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main([str(swav_file), str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "Converted 265 keys" in printed and "Dropped 56 keys" in printed
    assert len(torch.load(out, weights_only=True)["model"]) == 265
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_cli_exit_code_on_bad_input(tmp_path):
    bad = tmp_path / "random.pth"
    torch.save({"state_dict": {"module.head.weight": torch.zeros(4, 4)}}, bad)
    result = subprocess.run(
        [sys.executable, "-m", "joindet.tools.convert_swav", str(bad), str(tmp_path / "out.pth")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120,
    )
    assert result.returncode == 2
    assert "not a torchvision-style ResNet-50" in result.stderr and "missing ResNet-50 keys" in result.stderr
    assert not (tmp_path / "out.pth").exists()
