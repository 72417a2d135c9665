"""
Convert an official Deformable DETR checkpoint (fundamentalvision/Deformable-DETR) or a DETReg one
(amirbar/DETReg) into this project's names, loadable with ``MODEL.WEIGHTS`` (``JoinDetCheckpointer``) for
fine-tuning and for ``--eval-only``::

    python -m joindet.tools.convert_deformable_detr r50_deformable_detr-checkpoint.pth d2_deformable_detr.pth
    python -m joindet.tools.convert_deformable_detr checkpoint_imagenet.pth detreg_in.pth --variant detreg

It prints a report (what was mapped, what was dropped, what this project's model has that the checkpoint
lacks: "left new") and the config values that rebuild the checkpoint's architecture here;
:func:`convert_checkpoint` returns the same report as a dict. Equivalence with the official code (outputs
equal to ~5e-6 in float32, every variant but DC5, eval and train mode) is pinned by
``tests/test_convert_deformable_detr.py`` on fixtures made from the official source.

Reading the file
----------------
With :func:`joindet.utils.safe_pickle.load_torch` (``torch.load(weights_only=True)``). The official training
scripts save ``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` where ``args`` is an
``argparse.Namespace``, a class the weights-only unpickler refuses. When (and only when) that is the refused
global, the file is read again by the same weights-only unpickler with ``argparse.Namespace`` as its one
extra allowed global (``torch.serialization.safe_globals``): the unpickler then creates an empty Namespace
(``__new__``, no ``__init__``) and fills its ``__dict__`` with values that themselves pass the weights-only
rules (numbers, strings, lists, tensors): an attribute bag, nothing is imported or called. Only the fields
the weights cannot tell are used (``nheads``, the two-stage ``num_queries``, ``dilation``, ``dropout``, the
loss weights and matching costs) and the variant flags, checked against the weights; anything else the file
asks for is refused as before. Plain ``pickle`` is never used. A bare state dict (names -> tensors) and a
``{"model": ...}`` dict without ``args`` are accepted too; then those values take the official defaults (the
report says which) and ``--variant single_scale_dc5`` tells a DC5 model.

Renaming (official -> here; Detectron2's ResNet names for the backbone, as ``convert_swav`` and
Detectron2's own ``convert-torchvision-to-d2.py``)::

    backbone.0.body.conv1 / bn1                -> backbone.stem.conv1 / backbone.stem.conv1.norm
    backbone.0.body.layer{i}.{j}.conv{k}       -> backbone.res{i+1}.{j}.conv{k}
    backbone.0.body.layer{i}.{j}.bn{k}         -> backbone.res{i+1}.{j}.conv{k}.norm
    backbone.0.body.layer{i}.{j}.downsample.0  -> backbone.res{i+1}.{j}.shortcut
    backbone.0.body.layer{i}.{j}.downsample.1  -> backbone.res{i+1}.{j}.shortcut.norm
    transformer.{encoder,decoder}.layers.{i}.linear1 / linear2   -> ....ffn.0 / ffn.3
    transformer.decoder.layers.{i}.norm2 (after self-attention)  -> ....norm1
    transformer.decoder.layers.{i}.norm1 (after cross-attention) -> ....norm2
    feature_embed (DETReg's object-embedding MLP)                -> embed_head
    everything else (input_proj, query_embed, class_embed, bbox_embed, level_embed, reference_points,
    self_attn / cross_attn, enc_output, pos_trans, transformer.decoder.{class,bbox}_embed) keeps its name.

The backbone's BatchNorms are FrozenBatchNorm2d on both sides: ``weight``, ``bias``, ``running_mean`` and
``running_var`` are buffers with the same meaning and eps (1e-5); ``num_batches_tracked`` (a trainable
BatchNorm's counter, which FrozenBN does not have) is dropped. The official optimizer, lr_scheduler, epoch and
args entries are dropped too.

Classes (``--classes``)
-----------------------
The official COCO models have 91 outputs indexed by COCO category id (0 and the 11 unused ids included);
Detectron2's COCO datasets use 80 contiguous ids. ``coco80`` (the default for 91 outputs) keeps the rows of
the 80 category ids in Detectron2's order, so ``--eval-only`` on ``coco_2017_val`` takes ``NUM_CLASSES 80``;
fine-tuning on another dataset takes ``MODEL.WEIGHTS_NON_STRICT True`` (the class heads have another shape,
stay newly initialised, and the checkpointer logs them). The two-stage encoder head
(``class_embed.{DEC_LAYERS}``) is trained class-agnostically on column 0, which selects the proposals, in
both code bases: its row 0 stays row 0 (rows 1..79 follow the decoder's mapping; nothing reads them).
``object`` (the default for DETReg pretraining, whose pseudo-boxes all have label 1) keeps row 1 (row 0 of
the encoder head): the one-class objectness head of a JoinDet pretraining checkpoint, which fine-tuning
drops. ``voc20`` (the default for 21 outputs: DETReg fine-tuned on VOC, labels 0-19 in the order of
Detectron2's ``pascal_voc`` ``CLASS_NAMES``, output 20 unused) keeps rows 0-19. ``keep`` copies the head
(``NUM_CLASSES`` = its rows, the checkpoint's own label ids).

Variants (``--variant``: detected from the weights unless given; a given one must agree with them)
-----------------------------------------------------------------------------------------------------
Every variant: ``MODEL.META_ARCHITECTURE DeformableDETR``; ``MODEL.BACKBONE.NAME build_resnet_backbone``,
``FREEZE_AT 2`` (stem and res2 do not train there either); ``MODEL.RESNETS.DEPTH 50`` (101 for an R101),
``STRIDE_IN_1X1 False``, ``NORM FrozenBN``; ``INPUT.FORMAT RGB``, ``MODEL.PIXEL_MEAN [123.675, 116.28,
103.53]``, ``MODEL.PIXEL_STD [58.395, 57.12, 57.375]`` (the official ToTensor + Normalize ImageNet mean /
std, times 255); ``MODEL.DEFORMABLE_DETR``: ``HIDDEN_DIM 256``, ``NHEADS 8``, ``ENC_LAYERS 6``, ``DEC_LAYERS
6``, ``DIM_FEEDFORWARD 1024``, ``DROPOUT 0.1``, ``ENC_N_POINTS 4``, ``DEC_N_POINTS 4``, ``NUM_QUERIES 300``,
``NUM_CLASSES 80`` (coco80), ``NUM_DETECTIONS 100`` (the official PostProcess's top 100), ``SIZE_DIVISIBILITY
1`` (the official code pads a batch to its largest image only; 32 changes only the padding), and the loss
weights and matching costs of the args (class 2 / L1 5 / GIoU 2, focal alpha 0.25, auxiliary losses on:
this project's defaults too). Then:

=================  =======================================================================================
single_scale       ``IN_FEATURES ["res5"]``, ``NUM_FEATURE_LEVELS 1``, ``MODEL.RESNETS.OUT_FEATURES ["res5"]``
single_scale_dc5   single_scale + ``MODEL.RESNETS.RES5_DILATION 2`` and ``MODEL.BACKBONE.NAME
                   build_resnet_dc5_backbone`` (torchvision's DC5: the first res5 block undilated)
multi_scale        ``IN_FEATURES ["res3", "res4", "res5"]``, ``NUM_FEATURE_LEVELS 4``,
                   ``MODEL.RESNETS.OUT_FEATURES ["res3", "res4", "res5"]``
box_refine         multi_scale + ``WITH_BOX_REFINE True``
two_stage          box_refine + ``TWO_STAGE True``
detreg             DETReg pretraining (it has ``feature_embed``): multi-scale, refine / two-stage as
                   detected. The output is a JoinDet-style pretraining checkpoint (``embed_head``, one-class
                   head) that a fine-tuning model (``DeformableDETR``, the dataset's ``NUM_CLASSES``) loads
                   without those two heads
=================  =======================================================================================

DETReg's ``feature_embed`` (``--obj_embedding_head intermediate``, its default) predicts 2 x HIDDEN_DIM = 512
values, the pooled *layer2* (res3) features of its SwAV ResNet; JoinDet's ``embed_head`` predicts the pooled
res5 (2048 for R50) and ``JoinDet`` requires ``JOINDET.EMBED_DIM`` == res5 channels, so the converted head has
the right name and structure (and the same outputs, tested) but cannot be loaded into a JoinDet pretraining
model of R50, only into a fine-tuning one, which drops it.

The output is ``{"model": {name: tensor}, "__author__": ..., "matching_heuristics": False, "conversion":
{...}}`` (variant, classes and config as plain strings, for the record), written atomically
(:func:`joindet.utils.atomic.atomic_write`); an existing output is kept unless ``--overwrite``. Exit code 2
with the reason when the input is not such a checkpoint or does not fit this project's model.
"""
import argparse
import os
import re
import sys
from collections import OrderedDict

import torch

from joindet.utils.atomic import atomic_write
from joindet.utils.safe_pickle import UnsafePickleError, load_torch

__all__ = [
    "VARIANTS",
    "CLASS_MODES",
    "load_official_checkpoint",
    "detect_architecture",
    "coco_category_ids",
    "class_rows",
    "project_config",
    "build_project_cfg",
    "project_model_shapes",
    "convert_state_dict",
    "check_against_model",
    "convert_checkpoint",
    "format_report",
    "build_parser",
    "main",
]

VARIANTS = ("auto", "single_scale", "single_scale_dc5", "multi_scale", "box_refine", "two_stage", "detreg")
CLASS_MODES = ("auto", "coco80", "voc20", "object", "keep")

AUTHORS = {
    "deformable_detr": "Deformable DETR (fundamentalvision/Deformable-DETR), converted by joindet",
    "detreg": "DETReg (amirbar/DETReg), converted by joindet",
}

# Official defaults (main.py) of what the weights cannot tell.
_DEFAULT_NHEADS = 8
_DEFAULT_NUM_QUERIES = 300
_DEFAULT_DROPOUT = 0.1
# Loss weights and matching costs: official argument -> (this project's key, official default).
_TRAINING_ARGS = (
    ("aux_loss", "MODEL.DEFORMABLE_DETR.DEEP_SUPERVISION", True),
    ("cls_loss_coef", "MODEL.DEFORMABLE_DETR.CLASS_WEIGHT", 2.0),
    ("bbox_loss_coef", "MODEL.DEFORMABLE_DETR.L1_WEIGHT", 5.0),
    ("giou_loss_coef", "MODEL.DEFORMABLE_DETR.GIOU_WEIGHT", 2.0),
    ("set_cost_class", "MODEL.DEFORMABLE_DETR.COST_CLASS", 2.0),
    ("set_cost_bbox", "MODEL.DEFORMABLE_DETR.COST_BBOX", 5.0),
    ("set_cost_giou", "MODEL.DEFORMABLE_DETR.COST_GIOU", 2.0),
    ("focal_alpha", "MODEL.DEFORMABLE_DETR.FOCAL_ALPHA", 0.25),
)
# ImageNet mean / std of the official transforms (ToTensor, then Normalize), on 0-255 RGB pixels.
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]
# Output channels of torchvision's ResNet-50/101 stages -> Detectron2 feature names.
_FEATURE_OF_CHANNELS = {256: "res2", 512: "res3", 1024: "res4", 2048: "res5"}
_DEPTH_OF_RES4_BLOCKS = {6: 50, 23: 101, 36: 152}
# Top-level checkpoint entries of the official training script, all left out of the output.
_TOP_LEVEL_REASONS = {
    "optimizer": "optimizer state (not used when loading weights)",
    "lr_scheduler": "learning-rate scheduler state",
    "epoch": "training epoch",
    "args": "training arguments (read for the architecture, not copied)",
}


# ------------------------------------------------------------------------------------------------ loading
def load_official_checkpoint(path):
    """Read ``path`` safely (see the module docstring). Returns ``(state_dict, args, top_level)``:
    the model's state dict (``module.`` prefixes removed), ``args`` as a plain dict (``{}`` when the file
    has none) and ``top_level``, the file's other top-level keys (``[]`` for a bare state dict).

    Raises ``ValueError`` naming the file when it cannot be read or is not such a checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"cannot load {path!r}: no such file")
    try:
        try:
            data = load_torch(path)
        except UnsafePickleError as e:
            if e.refused != "argparse.Namespace":
                raise
            # The official ``args``: allow exactly this attribute container, nothing else (docstring).
            with torch.serialization.safe_globals([argparse.Namespace]):
                data = load_torch(path)
    except UnsafePickleError as e:
        raise ValueError(f"cannot load {path!r} safely: {e}. If the file comes from a source you trust, "
                         "re-save only its weights (torch.save({'model': ckpt['model']}, ...)) and convert that"
                         ) from e
    except Exception as e:  # torch raises many types on a damaged or foreign file
        raise ValueError(f"cannot load {path!r} as a PyTorch checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} holds a {type(data).__name__}, not a checkpoint dict")
    if "model" in data:
        state, top_level = data["model"], [k for k in data if k != "model"]
    elif data and all(isinstance(v, torch.Tensor) for v in data.values()):
        state, top_level = data, []
    else:
        raise ValueError(f"{path!r} has no 'model' entry (top-level keys: {sorted(map(str, data))[:10]}): not a "
                         "Deformable DETR / DETReg training checkpoint")
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path!r}: 'model' is a {type(state).__name__} with nothing in it, not a state dict")
    args = data.get("args") if "model" in data else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    elif not isinstance(args, dict):
        args = {}
    return _strip_module_prefix(state), dict(args), top_level


def _strip_module_prefix(state):
    for key in state:
        if not isinstance(key, str):
            raise ValueError(f"state dict keys must be strings, got {key!r}")
    if all(k.startswith("module.") for k in state):
        return OrderedDict((k[len("module."):], v) for k, v in state.items())
    return OrderedDict(state)


# ------------------------------------------------------------------------------------------- architecture
def _count(state, pattern):
    """Number of distinct integers ``i`` in keys matching ``pattern`` (a regex with one group)."""
    regex = re.compile(pattern)
    return len({m.group(1) for m in map(regex.match, state) if m})


def _wrong_architecture(state):
    """A sentence saying what ``state`` looks like when it is not a Deformable DETR state dict."""
    keys = list(state)
    if any(k.startswith(("backbone.res", "backbone.stem.")) for k in keys):
        return "it already has this project's (Detectron2) names: load it with MODEL.WEIGHTS directly"
    if any(k.startswith("detr.") for k in keys):
        return "it is a segmentation model (DETRsegm, keys 'detr.*'), which this project does not have"
    if "class_embed.weight" in state and "transformer.encoder.layers.0.linear1.weight" in state:
        return "it looks like a DETR checkpoint (single class head, no level embedding), not Deformable DETR"
    if any(k.startswith(("layer1.", "conv1.", "module.layer1.")) for k in keys):
        return "it looks like a bare ResNet; use python -m joindet.tools.convert_swav for a backbone"
    return "its keys are not Deformable DETR's (first keys: " + ", ".join(sorted(keys)[:6]) + ")"


def detect_architecture(state, args=None, variant="auto"):
    """Read the architecture from the state dict's names and shapes (and ``args`` where the weights cannot
    tell). Returns a dict: ``variant``, ``family`` ("deformable_detr" or "detreg"), ``depth``,
    ``in_features``, ``num_feature_levels``, ``hidden_dim``, ``nheads``, ``enc_layers``, ``dec_layers``,
    ``dim_feedforward``, ``enc_n_points``, ``dec_n_points``, ``num_queries``, ``num_classes`` (rows of the
    checkpoint's class head), ``with_box_refine``, ``two_stage``, ``dilation``, ``dropout`` (args, else the
    official 0.1), ``training`` (loss weights and matching costs as this project's keys: args, else the
    official defaults), ``embed_dim`` (DETReg's ``feature_embed`` output, else None) and ``notes`` (list of
    str: values taken from defaults, etc.).

    Raises ``ValueError`` for a checkpoint of another architecture, or when ``variant`` (not "auto")
    disagrees with the weights."""
    args = dict(args or {})
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    required = ("transformer.level_embed", "input_proj.0.0.weight", "backbone.0.body.conv1.weight",
                "class_embed.0.weight", "bbox_embed.0.layers.0.weight")
    absent = [k for k in required if k not in state]
    if absent:
        raise ValueError(f"not a Deformable DETR / DETReg checkpoint ({_wrong_architecture(state)}); missing "
                         f"{', '.join(absent)}")
    notes = []
    levels, hidden = (int(s) for s in state["transformer.level_embed"].shape)
    backbone_levels = [i for i in range(levels) if f"input_proj.{i}.0.weight" in state
                       and tuple(state[f"input_proj.{i}.0.weight"].shape[-2:]) == (1, 1)]
    in_channels = [int(state[f"input_proj.{i}.0.weight"].shape[1]) for i in backbone_levels]
    unknown = [c for c in in_channels if c not in _FEATURE_OF_CHANNELS]
    if unknown or not in_channels:
        raise ValueError(f"input projections take {in_channels} channels: not a ResNet-50/101 Deformable DETR")
    in_features = [_FEATURE_OF_CHANNELS[c] for c in in_channels]
    res4_blocks = _count(state, r"^backbone\.0\.body\.layer3\.(\d+)\.")
    if res4_blocks not in _DEPTH_OF_RES4_BLOCKS:
        raise ValueError(f"backbone layer3 has {res4_blocks} blocks: not a ResNet-50/101/152")
    enc_layers = _count(state, r"^transformer\.encoder\.layers\.(\d+)\.")
    dec_layers = _count(state, r"^transformer\.decoder\.layers\.(\d+)\.")
    if dec_layers == 0:
        raise ValueError("the checkpoint has no decoder layers (transformer.decoder.layers.*)")
    ffn_key = ("transformer.encoder.layers.0.linear1.weight" if enc_layers
               else "transformer.decoder.layers.0.linear1.weight")
    if ffn_key not in state:
        raise ValueError(f"not an official Deformable DETR layer layout: {ffn_key} is missing "
                         f"({_wrong_architecture(state)})")
    two_stage = "transformer.enc_output.weight" in state
    with_box_refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in state)
    nheads = args.get("nheads")
    if nheads is None:
        nheads = _DEFAULT_NHEADS
        notes.append(f"NHEADS {nheads}: the official default (the weights do not tell it and the file has no args)")

    def points(prefix):
        out = int(state[prefix + "sampling_offsets.weight"].shape[0])
        if out % (nheads * levels * 2):
            raise ValueError(f"{prefix}sampling_offsets has {out} outputs, not a multiple of 2 x {nheads} heads x "
                             f"{levels} levels")
        return out // (nheads * levels * 2)

    enc_points = points("transformer.encoder.layers.0.self_attn.") if enc_layers else int(args.get("enc_n_points", 4))
    dec_points = points("transformer.decoder.layers.0.cross_attn.")
    if two_stage:
        num_queries = args.get("num_queries")
        if num_queries is None:
            num_queries = _DEFAULT_NUM_QUERIES
            notes.append(f"NUM_QUERIES {num_queries}: two-stage proposals kept, the official default (not in the "
                         "weights and the file has no args)")
    else:
        num_queries = int(state["query_embed.weight"].shape[0])
    dilation = bool(args.get("dilation", False))
    if variant == "single_scale_dc5" and not args:
        dilation = True
    embed_dim = (int(state["feature_embed.layers.1.weight"].shape[0])
                 if "feature_embed.layers.1.weight" in state else None)
    family = "detreg" if embed_dim is not None else "deformable_detr"
    if in_features == ["res5"] and levels == 1:
        detected = "single_scale_dc5" if dilation else "single_scale"
    elif two_stage:
        detected = "two_stage"
    elif with_box_refine:
        detected = "box_refine"
    else:
        detected = "multi_scale"
    if variant == "detreg" and family != "detreg":
        raise ValueError("--variant detreg, but the checkpoint has no DETReg object-embedding head (feature_embed.*):"
                         f" it is a Deformable DETR {detected} checkpoint")
    if variant not in ("auto", "detreg") and variant != detected:
        raise ValueError(f"--variant {variant}, but the checkpoint is a {detected} model ({levels} feature level(s) "
                         f"from {in_features}, box refinement {with_box_refine}, two-stage {two_stage}"
                         + (", dilation from its args" if variant.startswith("single") else "")
                         + "): is it the file you meant?")
    if detected == "single_scale" and not args:
        notes.append("a DC5 model has the same weights: pass --variant single_scale_dc5 if it is one")
    if dilation and detected == "single_scale_dc5":
        notes.append("DC5: MODEL.BACKBONE.NAME build_resnet_dc5_backbone leaves the first res5 block undilated, "
                     "as torchvision's replace_stride_with_dilation does (Detectron2's own builder dilates all three)")
    for name, value in (("with_box_refine", with_box_refine), ("two_stage", two_stage),
                        ("num_feature_levels", levels), ("hidden_dim", hidden), ("enc_layers", enc_layers),
                        ("dec_layers", dec_layers)):
        if name in args and args[name] != value:
            raise ValueError(f"the checkpoint's args say {name}={args[name]!r} but its weights have {value!r}")
    return {
        "variant": "detreg" if family == "detreg" else detected,
        "base_variant": detected,
        "family": family,
        "depth": _DEPTH_OF_RES4_BLOCKS[res4_blocks],
        "in_features": in_features,
        "num_feature_levels": levels,
        "hidden_dim": hidden,
        "nheads": int(nheads),
        "enc_layers": enc_layers,
        "dec_layers": dec_layers,
        "dim_feedforward": int(state[ffn_key].shape[0]),
        "enc_n_points": enc_points,
        "dec_n_points": dec_points,
        "num_queries": int(num_queries),
        "num_classes": int(state["class_embed.0.weight"].shape[0]),
        "with_box_refine": with_box_refine,
        "two_stage": two_stage,
        "dilation": dilation,
        "dropout": float(args.get("dropout", _DEFAULT_DROPOUT)),
        "training": {key: (bool if isinstance(default, bool) else float)(
            default if args.get(name) is None else args[name]) for name, key, default in _TRAINING_ARGS},
        "embed_dim": embed_dim,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------------ classes
def coco_category_ids():
    """The 80 COCO category ids in Detectron2's contiguous order (``thing_dataset_id_to_contiguous_id``)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1]


def _resolve_classes(classes, arch):
    if classes not in CLASS_MODES:
        raise ValueError(f"classes must be one of {', '.join(CLASS_MODES)}, got {classes!r}")
    n = arch["num_classes"]
    if classes == "auto":
        if arch["family"] == "detreg" and n >= 2:
            return "object"
        return {91: "coco80", 21: "voc20"}.get(n, "keep")
    if classes == "voc20" and n != 21:
        raise ValueError(f"--classes voc20 needs DETReg's 21-output VOC head (20 classes + 1 unused), this one has {n}")
    if classes == "coco80" and n != 91:
        raise ValueError(f"--classes coco80 needs the 91-output COCO head of the official models, this one has {n}")
    if classes == "object" and n < 2:
        raise ValueError(f"--classes object keeps row 1 (DETReg's 'object' label), but the head has {n} row(s)")
    return classes


def class_rows(mode, arch, head_index):
    """Rows of the checkpoint's class head ``head_index`` (``class_embed.{i}``) that the class mode ``mode``
    keeps, in their new order (None = all): output ``j`` of the converted head is the official output
    ``rows[j]``. The two-stage encoder head (index DEC_LAYERS) keeps row 0 first: both code bases select
    proposals by its column 0."""
    encoder_head = arch["two_stage"] and head_index == arch["dec_layers"]
    if mode == "keep":
        return None
    if mode == "object":
        return [0] if encoder_head else [1]
    if mode == "voc20":
        return list(range(20))
    ids = coco_category_ids()
    return [0] + ids[1:] if encoder_head else ids


def _num_classes_out(mode, arch):
    return {"keep": arch["num_classes"], "object": 1, "coco80": 80, "voc20": 20}[mode]


# -------------------------------------------------------------------------------------------------- config
def project_config(arch, classes="coco80"):
    """This project's config values for the architecture ``arch`` (from :func:`detect_architecture`), as an
    ordered list of ``(KEY, value)``: the model of a fine-tuning / ``--eval-only`` run that takes the
    converted weights. For DETReg, ``NUM_CLASSES`` is the fine-tuning dataset's (80 shown, COCO)."""
    num_classes = 80 if arch["family"] == "detreg" else _num_classes_out(classes, arch)
    cfg = [
        ("MODEL.META_ARCHITECTURE", "DeformableDETR"),
        ("MODEL.PIXEL_MEAN", list(_PIXEL_MEAN)),
        ("MODEL.PIXEL_STD", list(_PIXEL_STD)),
        ("INPUT.FORMAT", "RGB"),
        ("MODEL.BACKBONE.NAME", "build_resnet_dc5_backbone" if arch["dilation"] else "build_resnet_backbone"),
        ("MODEL.BACKBONE.FREEZE_AT", 2),
        ("MODEL.RESNETS.DEPTH", arch["depth"]),
        ("MODEL.RESNETS.STRIDE_IN_1X1", False),
        ("MODEL.RESNETS.NORM", "FrozenBN"),
        ("MODEL.RESNETS.RES5_DILATION", 2 if arch["dilation"] else 1),
        ("MODEL.RESNETS.OUT_FEATURES", list(arch["in_features"])),
        ("MODEL.DEFORMABLE_DETR.IN_FEATURES", list(arch["in_features"])),
        ("MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", arch["num_feature_levels"]),
        ("MODEL.DEFORMABLE_DETR.HIDDEN_DIM", arch["hidden_dim"]),
        ("MODEL.DEFORMABLE_DETR.NHEADS", arch["nheads"]),
        ("MODEL.DEFORMABLE_DETR.ENC_LAYERS", arch["enc_layers"]),
        ("MODEL.DEFORMABLE_DETR.DEC_LAYERS", arch["dec_layers"]),
        ("MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", arch["dim_feedforward"]),
        ("MODEL.DEFORMABLE_DETR.DROPOUT", arch["dropout"]),
        ("MODEL.DEFORMABLE_DETR.ENC_N_POINTS", arch["enc_n_points"]),
        ("MODEL.DEFORMABLE_DETR.DEC_N_POINTS", arch["dec_n_points"]),
        ("MODEL.DEFORMABLE_DETR.NUM_QUERIES", arch["num_queries"]),
        ("MODEL.DEFORMABLE_DETR.NUM_CLASSES", num_classes),
        ("MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", arch["with_box_refine"]),
        ("MODEL.DEFORMABLE_DETR.TWO_STAGE", arch["two_stage"]),
        ("MODEL.DEFORMABLE_DETR.SIZE_DIVISIBILITY", 1),
        ("MODEL.DEFORMABLE_DETR.NUM_DETECTIONS", 100),
    ]
    cfg += list(arch.get("training", {}).items())
    return cfg


def _config_to_opts(config):
    """``(KEY, value)`` pairs -> the strings of a command line / ``merge_from_list``."""
    def text(value):
        if isinstance(value, list):
            return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value) + "]"
        return str(value)

    return [s for key, value in config for s in (key, text(value))]


def build_project_cfg(config):
    """A Detectron2 cfg with JoinDet's keys and ``config`` (from :func:`project_config`) applied, checked
    with :func:`joindet.config.validate_config`."""
    from detectron2.config import get_cfg

    from joindet.config import add_joindet_config, validate_config

    cfg = get_cfg()
    add_joindet_config(cfg)
    for key, value in config:
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    validate_config(cfg)
    return cfg


def project_model_shapes(config):
    """Names and shapes of the state dict of this project's model for ``config``, built on the ``meta``
    device (nothing allocated or initialised)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    import joindet.modeling  # noqa: F401  (registers the meta-architectures)

    cfg = build_project_cfg(config)
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ renaming
_BACKBONE_BLOCK = re.compile(r"^backbone\.0\.body\.layer([1-4])\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_CLASS_HEAD = re.compile(r"^(transformer\.decoder\.)?class_embed\.(\d+)\.(weight|bias)$")
_KEPT = re.compile(
    r"^(input_proj\.\d+\.[01]\.(weight|bias)"
    r"|query_embed\.weight"
    r"|(transformer\.decoder\.)?bbox_embed\.\d+\.layers\.\d+\.(weight|bias)"
    r"|transformer\.level_embed"
    r"|transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(weight|bias))$"
)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _rename_backbone(key):
    body = key[len("backbone.0.body."):]
    if body == "conv1.weight":
        return "backbone.stem.conv1.weight"
    m = re.match(r"^bn1\.(\w+)$", body)
    if m and m.group(1) in _BN_TENSORS:
        return "backbone.stem.conv1.norm." + m.group(1)
    m = _BACKBONE_BLOCK.match(key)
    if m is None:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    prefix = f"backbone.res{stage}.{block}."
    m = re.match(r"^conv([1-3])\.weight$", rest)
    if m:
        return f"{prefix}conv{m.group(1)}.weight"
    m = re.match(r"^bn([1-3])\.(\w+)$", rest)
    if m and m.group(2) in _BN_TENSORS:
        return f"{prefix}conv{m.group(1)}.norm.{m.group(2)}"
    if rest == "downsample.0.weight":
        return prefix + "shortcut.weight"
    m = re.match(r"^downsample\.1\.(\w+)$", rest)
    if m and m.group(1) in _BN_TENSORS:
        return prefix + "shortcut.norm." + m.group(1)
    return None


_ENCODER_LAYER = {"norm1": "norm1", "norm2": "norm2", "linear1": "ffn.0", "linear2": "ffn.3"}
# The official decoder layer names its norms by sub-layer (norm1 after cross-attention, norm2 after
# self-attention); here they are numbered in execution order.
_DECODER_LAYER = {"norm2": "norm1", "norm1": "norm2", "norm3": "norm3", "linear1": "ffn.0", "linear2": "ffn.3"}


def _rename_layer(key):
    kind, index, rest = _LAYER.match(key).groups()
    head, _, tail = rest.partition(".")
    attn = {"encoder": ("self_attn",), "decoder": ("self_attn", "cross_attn")}[kind]
    if head in attn:
        return key
    table = _ENCODER_LAYER if kind == "encoder" else _DECODER_LAYER
    if head in table and tail in ("weight", "bias"):
        return f"transformer.{kind}.layers.{index}.{table[head]}.{tail}"
    return None


def _rename(key):
    """Official name -> this project's name (None when the key is not one of the official model's)."""
    if key.startswith("backbone.0.body."):
        return _rename_backbone(key)
    if _LAYER.match(key):
        return _rename_layer(key)
    if _CLASS_HEAD.match(key) or _KEPT.match(key):
        return key
    m = re.match(r"^feature_embed\.layers\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"embed_head.layers.{m.group(1)}.{m.group(2)}"
    return None


def _drop_reason(key):
    if key.endswith("num_batches_tracked"):
        return "BatchNorm counter (FrozenBN has none)"
    if key.endswith(("total_ops", "total_params")):
        return "profiler counter (thop)"
    return None


def convert_state_dict(state, *, args=None, variant="auto", classes="auto"):
    """Convert an official state dict. Returns ``(converted, report)``: ``converted`` an OrderedDict of this
    project's names -> tensors (the class heads' rows selected per ``classes``, everything else the same
    tensors), and ``report`` a dict with ``variant``, ``architecture`` (:func:`detect_architecture`),
    ``classes`` (the mode used), ``config`` (:func:`project_config`), ``mapped`` (list of (official name,
    name here)), ``dropped`` (list of (name, reason)) and ``notes``.

    Raises ``ValueError`` when the state dict is not an official Deformable DETR / DETReg one, or when a key
    cannot be mapped (it would silently be lost)."""
    state = _strip_module_prefix(state)
    arch = detect_architecture(state, args, variant)
    mode = _resolve_classes(classes, arch)
    converted, mapped, dropped, unmapped = OrderedDict(), [], [], []
    for key, value in state.items():
        reason = _drop_reason(key)
        if reason:
            dropped.append((key, reason))
            continue
        new = _rename(key)
        if new is None:
            unmapped.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        head = _CLASS_HEAD.match(key)
        if head:
            rows = class_rows(mode, arch, int(head.group(2)))
            if rows is not None:
                value = value[rows]
        if new in converted:
            raise ValueError(f"two checkpoint keys map to {new!r}")
        converted[new] = value.detach()
        mapped.append((key, new))
    if unmapped:
        raise ValueError(f"{len(unmapped)} key(s) of the checkpoint are not an official Deformable DETR / DETReg "
                         f"model's and cannot be mapped: {', '.join(sorted(unmapped)[:8])}"
                         + (" ..." if len(unmapped) > 8 else ""))
    notes = list(arch["notes"])
    if mode == "coco80":
        notes.append("class heads: the 80 COCO category ids of the 91 outputs, in Detectron2's contiguous order")
    elif mode == "object":
        notes.append("class heads: row 1 (DETReg's 'object' label) -> the one-class objectness head of JoinDet")
    elif mode == "voc20":
        notes.append("class heads: rows 0-19 (DETReg's VOC labels, Detectron2's pascal_voc order); row 20 unused")
    if arch["two_stage"] and mode != "keep":
        notes.append(f"two-stage encoder head class_embed.{arch['dec_layers']}: row 0 (proposal objectness) kept "
                     "first")
    if arch["family"] == "detreg":
        notes.append(f"feature_embed -> embed_head ({arch['embed_dim']} outputs: DETReg's pooled SwAV layer2 "
                     "features); JoinDet's embedding is the pooled res5 (JOINDET.EMBED_DIM = res5 channels), so this head only "
                     "loads into a fine-tuning model, which drops it with the objectness head")
    report = {
        "variant": arch["variant"],
        "architecture": arch,
        "classes": mode,
        "config": project_config(arch, mode),
        "mapped": mapped,
        "dropped": dropped,
        "notes": notes,
    }
    return converted, report


def check_against_model(converted, report):
    """Compare ``converted`` with this project's model for ``report["config"]`` the way
    ``JoinDetCheckpointer`` will (:func:`joindet.checkpoint.classify_checkpoint_keys`). Adds to ``report``:
    ``left_new`` (model keys the checkpoint does not supply: heads created anew), ``pretrain_only``
    (checkpoint keys the fine-tuning model drops) and ``loaded`` (count). Raises ``ValueError`` when a
    converted key is missing from the model, unexpected, or of another shape (a conversion bug or an
    architecture this project cannot rebuild)."""
    from joindet.checkpoint import classify_checkpoint_keys

    shapes = project_model_shapes(report["config"])
    model_state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    keys = classify_checkpoint_keys(converted, model_state, is_pretrain_model=False)
    problems = {name: keys[name] for name in ("mismatched", "missing", "unexpected") if keys[name]}
    if problems:
        detail = "; ".join(
            f"{name}: " + ", ".join(
                f"{k} {tuple(converted[k].shape)} vs {shapes[k]}" if name == "mismatched" else k for k in sorted(v)[:6])
            for name, v in problems.items())
        raise ValueError(f"the converted weights do not fit this project's model for {report['variant']}: {detail}")
    report["left_new"] = sorted(keys["new"])
    report["pretrain_only"] = sorted(keys["dropped"])
    report["loaded"] = len(keys["loaded"])
    return report


# ---------------------------------------------------------------------------------------------- the file
def convert_checkpoint(src, dst, *, variant="auto", classes="auto", overwrite=False, check=True):
    """Convert the checkpoint file ``src`` into ``dst`` (see the module docstring). Returns the report of
    :func:`convert_state_dict` plus ``source``, ``output``, ``dropped`` extended with the file's top-level
    entries, and (``check``, the default) :func:`check_against_model`'s ``left_new`` / ``pretrain_only``.

    Raises ``ValueError`` (not such a checkpoint, or it does not fit) and ``FileExistsError`` (``dst``
    exists and not ``overwrite``); nothing is written then."""
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"output {dst!r} exists; pass overwrite=True (--overwrite) to replace it")
    state, args, top_level = load_official_checkpoint(src)
    converted, report = convert_state_dict(state, args=args, variant=variant, classes=classes)
    report["dropped"] = [(k, _TOP_LEVEL_REASONS.get(k, "not part of the model")) for k in top_level] + report["dropped"]
    report["source"], report["output"] = src, dst
    report["args_read"] = bool(args)
    if check:
        check_against_model(converted, report)
    family = report["architecture"]["family"]
    record = {"variant": report["variant"], "classes": report["classes"],
              "config": _config_to_opts(report["config"]), "source": os.path.basename(src)}
    with atomic_write(dst) as f:
        torch.save({"model": converted, "__author__": AUTHORS[family], "matching_heuristics": False,
                    "conversion": record}, f)
    return report


def _summarise(items, limit=8):
    items = sorted(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def format_report(report):
    """The report as text: variant, config (command-line form), mapped / dropped / left new, notes."""
    lines = [f"Variant: {report['variant']} ({report['architecture']['family']}), classes: {report['classes']}"]
    if "output" in report:
        lines.append(f"{report['source']} -> {report['output']}")
    renamed = [(a, b) for a, b in report["mapped"] if a != b]
    lines.append(f"Mapped {len(report['mapped'])} tensors ({len(renamed)} renamed, e.g. "
                 + "; ".join(f"{a} -> {b}" for a, b in renamed[:3]) + ")")
    reasons = {}
    for key, why in report["dropped"]:
        reasons.setdefault(why, []).append(key)
    lines.append(f"Dropped {len(report['dropped'])} entries" + (":" if report["dropped"] else ""))
    for why, keys in reasons.items():
        lines.append(f"  {why}: {_summarise(keys, 4)}")
    if "left_new" in report:
        lines.append("Left new (this project's model has them, the checkpoint does not): "
                     + (_summarise(report["left_new"]) if report["left_new"] else "none"))
        if report["pretrain_only"]:
            lines.append("Pretraining-only (dropped by JoinDetCheckpointer when fine-tuning): "
                         + _summarise(report["pretrain_only"]))
    lines.append("Config (append to train_net.py's command line, or set in the YAML):")
    opts = _config_to_opts(report["config"])
    lines.append("  " + " ".join(f"{k} {v!r}" if " " in v else f"{k} {v}" for k, v in zip(opts[::2], opts[1::2])))
    for note in report["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.convert_deformable_detr",
        description="Convert an official Deformable DETR or DETReg checkpoint to this project's names (MODEL.WEIGHTS).",
    )
    parser.add_argument("src", help="official checkpoint, e.g. r50_deformable_detr-checkpoint.pth")
    parser.add_argument("dst", help="converted checkpoint to write")
    parser.add_argument("--variant", default="auto", choices=VARIANTS,
                        help="expected variant (default: detected from the weights); a mismatch is an error")
    parser.add_argument("--classes", default="auto", choices=CLASS_MODES,
                        help="class head: coco80 (91 COCO outputs -> Detectron2's 80), voc20 (DETReg's 21 VOC "
                             "outputs -> 20), object (DETReg's label 1 -> one objectness class), keep (unchanged); "
                             "auto: object for DETReg pretraining, coco80 for 91 outputs, voc20 for 21, else keep")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare with this project's model (built on the meta device)")
    return parser


def main(argv=None):
    """CLI entry point; returns the exit code (0, or 2 with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.dst, variant=args.variant, classes=args.classes,
                                    overwrite=args.overwrite, check=not args.no_check)
    except (ValueError, FileExistsError) as e:
        print(f"convert_deformable_detr: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
