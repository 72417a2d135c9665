"""Official Deformable DETR / DETReg checkpoints -> this project (``joindet.tools.convert_deformable_detr``).

The fixtures in ``tests/fixtures/deformable_detr/`` hold small models built once from the official source code
(``tests/fixtures/make_deformable_detr_fixture.py`` says how), with random weights, two images and the official
outputs. Here they are written out as official training checkpoints (``args`` as an ``argparse.Namespace``,
optimizer, scheduler), converted, loaded into this project's model through ``JoinDetCheckpointer`` and run: the
outputs must equal the official ones.

Tolerance: ``ATOL = 1e-4``. Measured when the fixtures were made (float32, CPU): at most 5e-6 on the logits
(|logit| <= ~6), 1e-6 on the boxes and 1e-5 on the two-stage encoder logits, eval and train mode alike
(the fixture files keep the numbers under ``measured``). That is float32 rounding of a different but
equivalent order of operations (Detectron2's FrozenBN through ``F.batch_norm``, the normalisation by 0-255
mean / std); 1e-4 leaves a 10x margin for other CPUs and BLAS builds while a real difference (a wrong
dilation, dropout, a swapped norm) is 1e-2 to 1.
"""
import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import ImageList

from joindet.checkpoint import JoinDetCheckpointer
from joindet.modeling.utils import MLP
from joindet.tools import convert_deformable_detr as conv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "deformable_detr"
EQUIVALENT = ("single_scale", "multi_scale", "box_refine", "two_stage", "detreg")
ATOL = 1e-4


# --------------------------------------------------------------------- this project's side (the generator
# script imports these too, so that the numbers it prints are computed by exactly this code)
def project_model(report, num_classes=None):
    """This project's model for a conversion report's config (``num_classes`` overrides NUM_CLASSES), on the
    CPU, randomly initialised."""
    config = list(report["config"])
    if num_classes is not None:
        config = [(k, num_classes if k == "MODEL.DEFORMABLE_DETR.NUM_CLASSES" else v) for k, v in config]
    cfg = conv.build_project_cfg(config)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def project_outputs(model, images=None, tensor=None, mask=None, embed_head=None):
    """Run ``model`` in eval and train mode on the uint8 ``images`` (through its own normalisation) or on the
    official normalised ``tensor`` / ``mask``. Returns ``{"eval": {...}, "train": {...}}`` with the fixture's
    output names; ``embed_head`` (an MLP) is applied to the last decoder layer, as ``JoinDet`` does."""
    results = {}
    with torch.no_grad():
        for mode in ("eval", "train"):
            model.train(mode == "train")
            if images is not None:
                image_list, pad_mask = model.preprocess_image([{"image": img} for img in images])
            else:
                sizes = [(int((~m).any(1).sum()), int((~m).any(0).sum())) for m in mask]
                image_list, pad_mask = ImageList(tensor, sizes), mask
            out = model.forward_outputs(image_list, pad_mask)
            res = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"],
                   "aux_logits": torch.stack([a["pred_logits"] for a in out["aux_outputs"]]),
                   "aux_boxes": torch.stack([a["pred_boxes"] for a in out["aux_outputs"]])}
            if "enc_outputs" in out:
                res["enc_logits"] = out["enc_outputs"]["pred_logits"]
                res["enc_boxes"] = out["enc_outputs"]["pred_boxes"]
            if embed_head is not None:
                res["pred_features"] = embed_head(out["hs"][-1])
            results[mode] = res
    model.eval()
    return results


def embed_head_of(converted):
    """The converted ``embed_head.*`` in a separate MLP (JoinDet's head; see ``project_outputs``)."""
    state = {k[len("embed_head."):]: v for k, v in converted.items() if k.startswith("embed_head.")}
    if not state:
        return None
    d, e = state["layers.0.weight"].shape[1], state["layers.1.weight"].shape[0]
    head = MLP(d, d, e, 2)
    head.load_state_dict(state, strict=True)
    return head


def max_differences(report, official, ours, names=None):
    """Largest absolute difference per ``mode/output``; the official class columns are those the conversion
    kept (its class-row mapping)."""
    diffs = {}
    arch = report["architecture"]
    for mode in official:
        for name, ref in official[mode].items():
            if names is not None and name not in names:
                continue
            if name.endswith("logits"):
                rows = conv.class_rows(report["classes"], arch, arch["dec_layers"] if name == "enc_logits" else 0)
                ref = ref if rows is None else ref[..., rows]
            mine = ours[mode][name]
            assert tuple(mine.shape) == tuple(ref.shape), (mode, name, tuple(mine.shape), tuple(ref.shape))
            diffs[f"{mode}/{name}"] = float((mine.double() - ref.double()).abs().max())
    return diffs


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def common():
    return torch.load(FIXTURES / "common.pth", map_location="cpu", weights_only=True)


_CACHE = {}


def fixture(name):
    if name not in _CACHE:
        _CACHE[name] = torch.load(FIXTURES / f"{name}.pth", map_location="cpu", weights_only=True)
    return _CACHE[name]


def official_state(common, name):
    return OrderedDict(list(common["backbone"].items()) + list(fixture(name)["model"].items()))


def write_official_checkpoint(path, common, name, *, with_args=True, extra_keys=None):
    """``path`` in the layout of the official ``main.py`` (``utils.save_on_master({...})``)."""
    state = official_state(common, name)
    if extra_keys:
        state.update(extra_keys)
    data = {"model": state,
            "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 2e-4, "weight_decay": 1e-4, "params": [0]}]},
            "lr_scheduler": {"step_size": 40, "gamma": 0.1, "base_lrs": [2e-4], "last_epoch": 50,
                             "_step_count": 51, "_get_lr_called_within_step": False, "_last_lr": [2e-5]},
            "epoch": 49}
    if with_args:
        data["args"] = argparse.Namespace(**fixture(name)["args"], lr=2e-4, output_dir="exps/r50", seed=42)
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def converted_files(common, tmp_path_factory):
    """name -> (official checkpoint path, converted path, report), converted once per module."""
    folder = tmp_path_factory.mktemp("deformable_detr")
    files = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in files:
            tag = name + "".join(f"-{k}_{v}" for k, v in sorted(kwargs.items()))
            src = write_official_checkpoint(folder / f"{tag}-official.pth", common, name)
            dst = folder / f"{tag}-converted.pth"
            files[key] = (src, dst, conv.convert_checkpoint(src, dst, **kwargs))
        return files[key]

    return get


def assert_close(diffs, atol=ATOL):
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    assert not bad, f"differences above {atol}: {bad}"


# ------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("name", [n for n in EQUIVALENT if n != "detreg"])
def test_converted_checkpoint_reproduces_official_outputs(name, common, converted_files):
    """Convert, load through JoinDetCheckpointer (the ``--eval-only`` / ``MODEL.WEIGHTS`` route), run on the
    same images: eval and train mode (dropout 0) equal the official model's, classes mapped to COCO's 80."""
    _, dst, report = converted_files(name)
    assert report["variant"] == name and report["classes"] == "coco80"
    model = project_model(report)
    JoinDetCheckpointer(model, save_dir=str(dst.parent)).resume_or_load(str(dst), resume=False)
    official = fixture(name)["outputs"]
    assert_close(max_differences(report, official, project_outputs(model, images=common["images"])))
    assert_close(max_differences(report, official, project_outputs(model, tensor=common["tensor"], mask=common["mask"]),
                                 names=("pred_logits", "pred_boxes")))


def test_detreg_reproduces_official_outputs_and_object_embedding(common, converted_files):
    """DETReg: the one-class objectness head (its label 1), the boxes, and its object-embedding head (as
    JoinDet's ``embed_head`` on the last decoder layer) equal the official outputs."""
    _, dst, report = converted_files("detreg")
    assert report["variant"] == "detreg" and report["classes"] == "object"
    converted = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    model = project_model(report, num_classes=1)
    model.load_state_dict({k: v for k, v in converted.items() if not k.startswith("embed_head.")}, strict=True)
    ours = project_outputs(model, images=common["images"], embed_head=embed_head_of(converted))
    diffs = max_differences(report, fixture("detreg")["outputs"], ours)
    assert "eval/pred_features" in diffs and ours["eval"]["pred_features"].shape == (2, 12, 512)
    assert_close(diffs)


def test_class_head_kept_unchanged_gives_all_91_columns(common, converted_files):
    _, dst, report = converted_files("box_refine", classes="keep")
    assert dict(report["config"])["MODEL.DEFORMABLE_DETR.NUM_CLASSES"] == 91
    model = project_model(report)
    JoinDetCheckpointer(model).resume_or_load(str(dst), resume=False)
    ours = project_outputs(model, images=common["images"])
    assert ours["eval"]["pred_logits"].shape[-1] == 91
    assert_close(max_differences(report, fixture("box_refine")["outputs"], ours, names=("pred_logits",)))


def test_the_fixture_catches_a_wrong_mapping(common, converted_files):
    """Sensitivity: the decoder's norms mapped by number (the classic mistake) changes the outputs by far
    more than the tolerance."""
    _, dst, report = converted_files("multi_scale")
    state = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    for i in range(report["architecture"]["dec_layers"]):
        for t in ("weight", "bias"):
            a, b = f"transformer.decoder.layers.{i}.norm1.{t}", f"transformer.decoder.layers.{i}.norm2.{t}"
            state[a], state[b] = state[b], state[a]
    model = project_model(report)
    model.load_state_dict(state, strict=True)
    diffs = max_differences(report, fixture("multi_scale")["outputs"], project_outputs(model, images=common["images"]),
                            names=("pred_logits",))
    assert min(diffs.values()) > 100 * ATOL, diffs


# ------------------------------------------------------------------------------------------------- DC5
def test_dc5_backbone_matches_torchvision_dilation(common, tmp_path):
    """Single-scale DC5: RES5_DILATION 2 with build_resnet_dc5_backbone. Detectron2's own builder dilates all
    three res5 blocks; torchvision (the official backbone) keeps the first one at dilation 1 (``_make_layer``'s
    ``previous_dilation``): with Detectron2's builder the outputs differ, with the DC5 builder they match."""
    src = write_official_checkpoint(tmp_path / "dc5.pth", common, "single_scale_dc5")
    report = conv.convert_checkpoint(src, tmp_path / "dc5-converted.pth")
    cfg = dict(report["config"])
    assert report["variant"] == "single_scale_dc5" and cfg["MODEL.RESNETS.RES5_DILATION"] == 2
    assert cfg["MODEL.BACKBONE.NAME"] == "build_resnet_dc5_backbone"
    assert any("DC5" in n for n in report["notes"])
    model = project_model(report)
    JoinDetCheckpointer(model).resume_or_load(str(tmp_path / "dc5-converted.pth"), resume=False)
    assert [b.conv2.dilation for b in model.backbone.res5] == [(1, 1), (2, 2), (2, 2)]
    official = fixture("single_scale_dc5")["outputs"]
    names = ("pred_logits", "pred_boxes")
    assert_close(max_differences(report, official, project_outputs(model, images=common["images"]), names=names))
    model.backbone.res5[0].conv2.dilation = model.backbone.res5[0].conv2.padding = (2, 2)  # Detectron2's DC5
    detectron2_dc5 = max_differences(report, official, project_outputs(model, images=common["images"]), names=names)
    assert max(detectron2_dc5.values()) > 1e-2, detectron2_dc5


# --------------------------------------------------------------------------------------------- the report
def test_report_lists_mapped_dropped_and_new(common, tmp_path, capsys):
    extra = {"backbone.0.body.bn1.num_batches_tracked": torch.tensor(7),
             "backbone.0.body.layer1.0.bn1.num_batches_tracked": torch.tensor(7)}
    src = write_official_checkpoint(tmp_path / "two_stage.pth", common, "two_stage", extra_keys=extra)
    dst = tmp_path / "out.pth"
    assert conv.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    report = conv.convert_checkpoint(src, dst, overwrite=True)
    official = official_state(common, "two_stage")
    mapped = dict(report["mapped"])
    assert sorted(mapped) == sorted(official)  # every official tensor mapped, nothing invented
    for old, new in [
        ("backbone.0.body.conv1.weight", "backbone.stem.conv1.weight"),
        ("backbone.0.body.bn1.running_var", "backbone.stem.conv1.norm.running_var"),
        ("backbone.0.body.layer1.0.downsample.0.weight", "backbone.res2.0.shortcut.weight"),
        ("backbone.0.body.layer1.0.downsample.1.running_mean", "backbone.res2.0.shortcut.norm.running_mean"),
        ("backbone.0.body.layer4.2.bn3.weight", "backbone.res5.2.conv3.norm.weight"),
        ("transformer.encoder.layers.1.linear1.weight", "transformer.encoder.layers.1.ffn.0.weight"),
        ("transformer.decoder.layers.0.linear2.bias", "transformer.decoder.layers.0.ffn.3.bias"),
        ("transformer.decoder.layers.0.norm2.weight", "transformer.decoder.layers.0.norm1.weight"),
        ("transformer.decoder.layers.0.norm1.weight", "transformer.decoder.layers.0.norm2.weight"),
        ("transformer.decoder.layers.1.norm3.bias", "transformer.decoder.layers.1.norm3.bias"),
        ("transformer.decoder.class_embed.2.weight", "transformer.decoder.class_embed.2.weight"),
        ("transformer.pos_trans.weight", "transformer.pos_trans.weight"),
    ]:
        assert mapped[old] == new
    dropped = dict(report["dropped"])
    assert {"optimizer", "lr_scheduler", "epoch", "args", *extra} <= set(dropped)
    assert "num_batches_tracked" not in " ".join(mapped.values())
    assert report["left_new"] == [] and report["pretrain_only"] == []
    assert report["loaded"] == len(mapped)
    assert report["args_read"]
    cfg = dict(report["config"])
    assert {k: cfg[k] for k in ("MODEL.DEFORMABLE_DETR.IN_FEATURES", "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS",
                                "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "MODEL.DEFORMABLE_DETR.TWO_STAGE",
                                "MODEL.DEFORMABLE_DETR.NUM_QUERIES", "MODEL.DEFORMABLE_DETR.ENC_N_POINTS",
                                "MODEL.DEFORMABLE_DETR.DEC_N_POINTS", "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD",
                                "MODEL.DEFORMABLE_DETR.NUM_CLASSES", "MODEL.DEFORMABLE_DETR.DROPOUT",
                                "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.NORM")} == {
        "MODEL.DEFORMABLE_DETR.IN_FEATURES": ["res3", "res4", "res5"],
        "MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS": 4, "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE": True,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE": True, "MODEL.DEFORMABLE_DETR.NUM_QUERIES": 12,
        "MODEL.DEFORMABLE_DETR.ENC_N_POINTS": 2, "MODEL.DEFORMABLE_DETR.DEC_N_POINTS": 3,
        "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD": 64, "MODEL.DEFORMABLE_DETR.NUM_CLASSES": 80,
        "MODEL.DEFORMABLE_DETR.DROPOUT": 0.0, "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.NORM": "FrozenBN"}
    for text in ("Variant: two_stage", "Mapped", "Dropped", "optimizer", "num_batches_tracked",
                 "Left new (this project's model has them, the checkpoint does not): none",
                 "MODEL.DEFORMABLE_DETR.TWO_STAGE True"):
        assert text in printed, text
    saved = torch.load(dst, map_location="cpu", weights_only=True)
    assert saved["matching_heuristics"] is False and "Deformable DETR" in saved["__author__"]
    assert saved["conversion"]["variant"] == "two_stage"
    # the class heads: decoder heads -> the 80 COCO ids; the encoder head keeps its column 0 first
    ids = conv.coco_category_ids()
    assert len(ids) == 80 and ids[:3] == [1, 2, 3] and ids[-1] == 90
    assert torch.equal(saved["model"]["class_embed.0.weight"], official["class_embed.0.weight"][ids])
    assert torch.equal(saved["model"]["class_embed.2.bias"][0], official["class_embed.2.bias"][0])


def test_detreg_report_and_fine_tuning_load(common, converted_files):
    """DETReg -> a JoinDet-style pretraining checkpoint; a fine-tuning model (6 classes) loads it through
    JoinDetCheckpointer without the objectness and embedding heads, everything else from the checkpoint."""
    _, dst, report = converted_files("detreg")
    assert report["architecture"]["family"] == "detreg" and report["architecture"]["embed_dim"] == 512
    assert dict(report["mapped"])["feature_embed.layers.1.weight"] == "embed_head.layers.1.weight"
    assert set(report["left_new"]) == {f"class_embed.{i}.{t}" for i in range(2) for t in ("weight", "bias")}
    assert {k for k in report["pretrain_only"] if k.startswith("embed_head.")} == {
        f"embed_head.layers.{i}.{t}" for i in range(2) for t in ("weight", "bias")}
    assert any("EMBED_DIM" in n for n in report["notes"])
    saved = torch.load(dst, map_location="cpu", weights_only=True)
    assert saved["model"]["class_embed.0.weight"].shape == (1, 256)  # JoinDet's objectness head
    model = project_model(report, num_classes=6)
    JoinDetCheckpointer(model).resume_or_load(str(dst), resume=False)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["model"].items()
               if not k.startswith(("class_embed.", "embed_head.")))
    ours = project_outputs(model, images=common["images"])
    assert ours["eval"]["pred_logits"].shape == (2, 12, 6)
    assert_close(max_differences(report, fixture("detreg")["outputs"], ours, names=("pred_boxes", "aux_boxes")))


def test_bare_state_dict_without_args_uses_official_defaults(common, tmp_path):
    """No ``args`` (e.g. a re-saved ``{"model": ...}``, here with DDP's ``module.`` prefix): what the weights
    cannot tell takes the official default and the report says so; --variant settles DC5."""
    state = {"module." + k: v for k, v in official_state(common, "two_stage").items()}
    torch.save(state, tmp_path / "bare.pth")
    report = conv.convert_checkpoint(tmp_path / "bare.pth", tmp_path / "bare-out.pth")
    assert not report["args_read"] and dict(report["config"])["MODEL.DEFORMABLE_DETR.NUM_QUERIES"] == 300
    assert any("NUM_QUERIES 300" in n for n in report["notes"])
    torch.save({"model": official_state(common, "single_scale")}, tmp_path / "ss.pth")
    report = conv.convert_checkpoint(tmp_path / "ss.pth", tmp_path / "ss-out.pth", variant="single_scale_dc5")
    assert report["variant"] == "single_scale_dc5" and dict(report["config"])["MODEL.RESNETS.RES5_DILATION"] == 2


# --------------------------------------------------------------------------------------------- errors
class NotAllowed:
    """A class the weights-only loader refuses (stands for anything but argparse.Namespace)."""


@pytest.mark.parametrize("case", ["detr", "converted", "unknown_key", "variant", "classes"])
def test_wrong_architecture_gives_clear_errors(case, common):
    state = official_state(common, "multi_scale")
    kwargs = {}
    if case == "detr":
        state = {"class_embed.weight": torch.zeros(92, 256), "query_embed.weight": torch.zeros(100, 256),
                 "transformer.encoder.layers.0.linear1.weight": torch.zeros(2048, 256),
                 "backbone.0.body.conv1.weight": torch.zeros(64, 3, 7, 7)}
        expected = "DETR checkpoint"
    elif case == "converted":
        state = {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7), "transformer.level_embed": torch.zeros(4, 256)}
        expected = "already has this project's"
    elif case == "unknown_key":
        state["transformer.decoder.layers.0.adapter.weight"] = torch.zeros(4, 4)
        expected = "cannot be mapped: transformer.decoder.layers.0.adapter.weight"
    elif case == "variant":
        kwargs = {"variant": "two_stage"}
        expected = "--variant two_stage, but the checkpoint is a multi_scale model"
    else:
        kwargs = {"classes": "object", "variant": "detreg"}
        expected = "no DETReg object-embedding head"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace("'", ".")):
        conv.convert_state_dict(state, **kwargs)


def test_cli_errors_and_unsafe_files(common, tmp_path, capsys):
    src = write_official_checkpoint(tmp_path / "ss.pth", common, "single_scale")
    converted = tmp_path / "ss-converted.pth"
    assert conv.main([str(src), str(converted)]) == 0
    # an existing output is kept
    assert conv.main([str(src), str(converted)]) == 2
    assert "exists" in capsys.readouterr().err
    # anything but argparse.Namespace stays refused: nothing is imported or run
    torch.save({"model": official_state(common, "single_scale"), "args": NotAllowed()}, tmp_path / "evil.pth")
    assert conv.main([str(tmp_path / "evil.pth"), str(tmp_path / "evil-out.pth")]) == 2
    err = capsys.readouterr().err
    assert "NotAllowed" in err and "refusing" in err and not (tmp_path / "evil-out.pth").exists()
    # not a checkpoint
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert conv.main([str(tmp_path / "junk.pth"), str(tmp_path / "junk-out.pth")]) == 2
    assert "cannot load" in capsys.readouterr().err
    # a single-scale conversion into a multi-scale model: the checkpointer names the mismatch
    multi = project_model(conv.convert_state_dict(official_state(common, "multi_scale"))[1])
    with pytest.raises(ValueError, match="does not fit this model"):
        JoinDetCheckpointer(multi).resume_or_load(str(converted), resume=False)


def test_supervised_checkpoint_fine_tunes_on_other_classes_non_strict(common, converted_files):
    """A COCO model fine-tuned on a 6-class dataset: strict loading names the class heads, non-strict
    (MODEL.WEIGHTS_NON_STRICT) loads everything else and leaves the heads as initialised."""
    _, dst, report = converted_files("single_scale")
    model = project_model(report, num_classes=6)
    with pytest.raises(ValueError, match="mismatched keys: class_embed"):
        JoinDetCheckpointer(model).resume_or_load(str(dst), resume=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("class_embed.")}
    JoinDetCheckpointer(model, strict=False).resume_or_load(str(dst), resume=False)
    saved = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert all(torch.equal(state[k], v) for k, v in saved.items() if not k.startswith("class_embed."))


def test_dc5_backbone_refuses_an_undilated_config():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from joindet.modeling.backbone import build_resnet_dc5_backbone

    cfg = get_cfg()
    with pytest.raises(ValueError, match="RES5_DILATION 2"):
        build_resnet_dc5_backbone(cfg, ShapeSpec(channels=3))
