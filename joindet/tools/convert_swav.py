"""
Convert a SwAV ResNet-50 checkpoint (torchvision parameter names) into a backbone-only checkpoint
with Detectron2's ResNet names, loadable with ``MODEL.WEIGHTS`` (``JoinDetCheckpointer``)::

    python -m joindet.tools.convert_swav swav_800ep_pretrain.pth.tar swav_r50_d2.pth [--overwrite]

Accepted inputs (read with ``joindet.utils.safe_pickle.load_torch``, i.e. ``torch.load(...,
weights_only=True)``: a file that would run code when unpickled is refused, naming what it asks for):

* SwAV's training checkpoint: a dict whose ``state_dict`` holds the model, keys prefixed by
  ``module.`` (DistributedDataParallel), other top-level entries (epoch, optimizer) ignored;
* a bare state dict, with or without the ``module.`` prefix (the released
  ``swav_800ep_pretrain.pth.tar`` is one).

Dropped: SwAV's heads (``projection_head.*``, ``prototypes.*``), a classifier (``fc.*``) and
BatchNorm's ``num_batches_tracked``. The remaining keys must be exactly ResNet-50's (names and
shapes of torchvision's ``resnet50()``), else ``ValueError`` says what is missing, unexpected or of
another shape. Renaming, all under ``backbone.``::

    conv1                      -> stem.conv1             bn1 -> stem.conv1.norm
    layer{i}.{j}.conv{k}       -> res{i+1}.{j}.conv{k}   layer{i}.{j}.bn{k} -> res{i+1}.{j}.conv{k}.norm
    layer{i}.{j}.downsample.0  -> res{i+1}.{j}.shortcut
    layer{i}.{j}.downsample.1  -> res{i+1}.{j}.shortcut.norm

SwAV's bottleneck strides in the 3x3 conv, so the backbone must use
``MODEL.RESNETS.STRIDE_IN_1X1 False`` (as ``configs/Base-DeformableDETR.yaml``), and it expects
RGB input normalised with the ImageNet mean / std (that file's PIXEL_MEAN / PIXEL_STD).

The output is ``{"model": {name: tensor}, "__author__": ..., "matching_heuristics": False}``,
written atomically (temporary file + ``os.replace``); an existing output is kept unless
``--overwrite``. Exit code 2 with the reason when the input is not such a checkpoint.
"""
import argparse
import os
import re
import sys
from collections import OrderedDict

import torch

from joindet.utils.atomic import atomic_write
from joindet.utils.safe_pickle import UnsafePickleError, load_torch

__all__ = ["convert_swav_state_dict", "convert_swav_checkpoint", "build_parser", "main"]

AUTHOR = "SwAV, converted by joindet"
DROPPED_PREFIXES = ("projection_head.", "prototypes.", "fc.")
_STAGE_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _resnet50_reference_shapes():
    """Names and shapes of torchvision's ResNet-50 state dict (fc and num_batches_tracked left out).

    The model is built on the ``meta`` device: no memory is allocated and nothing is initialised.
    """
    from torchvision.models import resnet50

    with torch.device("meta"):
        model = resnet50()
    return OrderedDict(
        (k, tuple(v.shape)) for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    )


def _rename(key):
    """torchvision ResNet name (no prefix) -> Detectron2 ResNet name, without the ``backbone.`` prefix."""
    if key.startswith("conv1."):
        return "stem.conv1." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    match = _STAGE_BLOCK.match(key)
    if match is None:
        raise ValueError(f"cannot map {key!r} to a Detectron2 ResNet name")
    stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
    rest = re.sub(r"^bn([1-3])\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage + 1}.{block}.{rest}"


def _summarise(keys, limit=8):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _split_state_dict(state_dict):
    """Strip ``module.`` and sort the keys into ResNet keys and dropped ones.

    Returns (resnet: OrderedDict torchvision name -> tensor, dropped: list of original keys).
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"expected a non-empty state dict (name -> tensor), got {type(state_dict).__name__}")
    resnet, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise ValueError(f"state dict keys must be strings, got {key!r}")
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(DROPPED_PREFIXES) or name.endswith("num_batches_tracked"):
            dropped.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"entry {key!r} is a {type(value).__name__}, not a tensor: not a model state dict")
        if name in resnet:
            raise ValueError(f"key {name!r} appears both with and without the 'module.' prefix")
        resnet[name] = value
    return resnet, dropped


def _check_resnet50(resnet):
    """Raise ``ValueError`` unless ``resnet`` has exactly ResNet-50's keys and shapes."""
    reference = _resnet50_reference_shapes()
    missing = [k for k in reference if k not in resnet]
    unexpected = [k for k in resnet if k not in reference]
    mismatched = [
        f"{k} {tuple(resnet[k].shape)} (ResNet-50: {reference[k]})"
        for k in reference if k in resnet and tuple(resnet[k].shape) != reference[k]
    ]
    if not missing and not unexpected and not mismatched:
        return
    problems = []
    if missing:
        problems.append(f"missing ResNet-50 keys: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"keys with a shape other than ResNet-50's: {_summarise(mismatched, limit=4)}")
    if len(missing) == len(reference):
        intro = "not a torchvision-style ResNet-50 state dict (none of its layer keys are present)"
    else:
        intro = "not a ResNet-50 state dict"
    raise ValueError(f"{intro}; " + "; ".join(problems))


def convert_swav_state_dict(state_dict):
    """Convert a SwAV / torchvision ResNet-50 state dict to Detectron2 backbone names.

    Args:
        state_dict (dict[str, Tensor]): torchvision ResNet-50 names, optionally prefixed by
            ``module.``; ``projection_head.*``, ``prototypes.*``, ``fc.*`` and
            ``*.num_batches_tracked`` are dropped.

    Returns:
        OrderedDict[str, Tensor]: ``backbone.<Detectron2 ResNet name>`` -> the same tensor values
        (same dtype, contiguous CPU copies), 265 entries for ResNet-50 (53 conv weights, 53 BatchNorms with
        weight / bias / running_mean / running_var).

    Raises:
        ValueError: when the state dict is not a ResNet-50's (missing / unexpected keys, wrong shapes).
    """
    resnet, _ = _split_state_dict(state_dict)
    _check_resnet50(resnet)
    return OrderedDict(
        ("backbone." + _rename(k), v.detach().to("cpu").contiguous().clone()) for k, v in resnet.items()
    )


def _load_state_dict(src):
    """Read ``src`` and return the model state dict inside it (see the module docstring)."""
    if not os.path.isfile(src):
        raise ValueError(f"cannot load {src!r}: no such file")
    try:
        checkpoint = load_torch(src)
    except UnsafePickleError as e:  # its message names the file and what was refused
        raise ValueError(f"cannot load {src!r} as a PyTorch checkpoint: {e}") from e
    except Exception as e:  # torch raises many types (RuntimeError, EOFError, ...)
        raise ValueError(f"cannot load {src!r} as a PyTorch checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{src!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    if "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
        if not isinstance(state_dict, dict):
            raise ValueError(f"{src!r}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
        return state_dict
    return checkpoint


def convert_swav_checkpoint(src, dst, overwrite=False):
    """Convert the SwAV checkpoint file ``src`` into a Detectron2 backbone checkpoint ``dst``.

    Returns:
        dict: ``converted`` (list of output keys) and ``dropped`` (list of input keys left out).

    Raises:
        ValueError: ``src`` cannot be loaded or is not a ResNet-50 checkpoint.
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"output {dst!r} exists; pass overwrite=True (--overwrite) to replace it")
    state_dict = _load_state_dict(src)
    _, dropped = _split_state_dict(state_dict)
    converted = convert_swav_state_dict(state_dict)
    with atomic_write(dst) as f:
        torch.save({"model": converted, "__author__": AUTHOR, "matching_heuristics": False}, f)
    return {"converted": list(converted), "dropped": dropped}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.convert_swav",
        description="Convert a SwAV ResNet-50 checkpoint to a Detectron2 backbone checkpoint (MODEL.WEIGHTS).",
    )
    parser.add_argument("input", help="SwAV checkpoint, e.g. swav_800ep_pretrain.pth.tar")
    parser.add_argument("output", help="converted checkpoint to write, e.g. swav_r50_d2.pth")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def main(argv=None):
    """CLI entry point; returns the exit code (0, or 2 with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        summary = convert_swav_checkpoint(args.input, args.output, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"convert_swav: error: {e}", file=sys.stderr)
        return 2
    dropped = summary["dropped"]
    print(f"Converted {len(summary['converted'])} keys to Detectron2 ResNet names under 'backbone.' -> {args.output}")
    print(f"Dropped {len(dropped)} keys" + (f": {_summarise(dropped)}" if dropped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
