"""Checkpoint loading with JoinDet's rules: no code in a weights file runs, pretraining heads are dropped
at fine-tuning, and a clear error when a checkpoint does not fit the model."""
import logging
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .modeling.joindet import PRETRAIN_ONLY_PREFIXES
from .utils.atomic import atomic_write
from .utils.safe_pickle import load_pickle, load_torch

__all__ = ["JoinDetCheckpointer", "classify_checkpoint_keys"]

logger = logging.getLogger("joindet")

# Heads created anew for fine-tuning (the classification layer, sized for the target dataset's classes).
_NEW_HEAD_PREFIXES = ("class_embed.", "transformer.decoder.class_embed.")


def _summarise(keys, limit=12):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def classify_checkpoint_keys(checkpoint_state, model_state, is_pretrain_model):
    """Sort a checkpoint's keys against a model's.

    Args:
        checkpoint_state: the checkpoint's ``model`` dict (name -> tensor).
        model_state: ``model.state_dict()``.
        is_pretrain_model: the model is a JoinDet pretraining model (it keeps the pretraining heads).

    Returns a dict of key lists: ``dropped`` (pretraining-only heads that a fine-tuned model does not
    take), ``loaded``, ``new`` (model keys re-initialised: the new classification layer), ``missing``
    (model keys the checkpoint lacks that are not new heads), ``unexpected`` (checkpoint keys the model
    lacks) and ``mismatched`` (same name, other shape), and ``kind``: "detector" for a full detector
    checkpoint (it has transformer weights), "backbone" otherwise (e.g. converted SwAV weights), where
    only the backbone's keys are expected.
    """
    is_joindet_ckpt = any(k.startswith("embed_head.") for k in checkpoint_state)
    kind = "detector" if any(k.startswith("transformer.") for k in checkpoint_state) else "backbone"
    dropped = []
    if is_joindet_ckpt and not is_pretrain_model:
        dropped = [k for k in checkpoint_state if k.startswith(PRETRAIN_ONLY_PREFIXES)]
    considered = {k: v for k, v in checkpoint_state.items() if k not in set(dropped)}
    mismatched = [k for k, v in considered.items()
                  if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
    loaded = [k for k in considered if k in model_state and k not in set(mismatched)]
    unexpected = [k for k in considered if k not in model_state]
    absent = [k for k in model_state if k not in considered]
    if kind == "detector":
        new = [k for k in absent if dropped and k.startswith(_NEW_HEAD_PREFIXES)]
        missing = [k for k in absent if k not in set(new) and not k.startswith("embed_encoder.")]
    else:
        new = []
        missing = [k for k in absent if k.startswith("backbone.")]
    return {"kind": kind, "dropped": dropped, "loaded": loaded, "new": new, "missing": missing,
            "unexpected": unexpected, "mismatched": mismatched}


def _model_zoo_checkpoint(data, path):
    """The checkpoint dict of a ``.pkl`` file's contents, as Detectron2's ``DetectionCheckpointer._load_file``
    builds it: a Detectron2 model-zoo file (``model`` and ``__author__``) as it is, otherwise a Caffe2 /
    Detectron1 file whose arrays (under ``blobs`` for detection models) are matched by name heuristics."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a Detectron2 model-zoo dict")
    if "model" in data and "__author__" in data:
        logger.info("Reading a file from '%s'", data["__author__"])
        return data
    blobs = data.get("blobs", data)  # detection models have "blobs", ImageNet models do not
    weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


class JoinDetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads every file without running code in it: ``.pkl`` (model zoo)
    through :func:`joindet.utils.safe_pickle.load_pickle` (numpy arrays and plain containers only),
    everything else (``.pth``, pycls ``.pyth``) with ``torch.load(weights_only=True)``. That covers
    ``MODEL.WEIGHTS``, ``--resume`` (``resume_or_load`` -> ``load`` -> ``_load_file``) and
    ``--eval-only``; a refused file raises :class:`~joindet.utils.safe_pickle.UnsafePickleError` naming
    the file and the refused global. Then, when loading weights into a model, it:

    - drops the objectness head and the embedding head of a JoinDet pretraining checkpoint loaded into a
      supervised detector (the classification layer is then new, sized for the dataset's classes);
    - logs which keys were loaded, dropped and newly initialised;
    - raises ``ValueError`` listing the mismatched / missing / unexpected keys when the checkpoint comes
      from another architecture (e.g. single-scale into multi-scale), unless ``strict=False``.
    Loading a checkpoint of the same model (``--resume``, ``--eval-only``) passes every check.
    """

    def __init__(self, model, save_dir="", *, strict=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def _load_file(self, filename):
        """Detectron2's ``_load_file`` with its two ``pickle.load`` / default ``torch.load`` reads replaced by
        the safe ones (``.pth`` goes through Detectron2's own path, which reads with :meth:`_torch_load`)."""
        if filename.endswith(".pkl"):
            return _model_zoo_checkpoint(load_pickle(filename), filename)
        if filename.endswith(".pyth"):  # pycls
            data = load_torch(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise ValueError(f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'.")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f):
        return load_torch(f)

    def save(self, name, **kwargs):
        """fvcore's ``Checkpointer.save`` (the model, every checkpointable's state and ``kwargs`` into
        ``<save_dir>/<name>.pth``, then ``last_checkpoint`` names it), with both files written atomically
        (:func:`joindet.utils.atomic.atomic_write`): a crash or a full disk mid-save leaves the previous
        checkpoint and ``last_checkpoint`` as they were, and the error names the file."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def _load_model(self, checkpoint):
        state = checkpoint.get("model")
        if not isinstance(state, dict) or checkpoint.get("matching_heuristics", False):
            return super()._load_model(checkpoint)  # Detectron2's own formats (e.g. model-zoo .pkl)
        is_pretrain_model = hasattr(self.model, "embed_head")
        keys = classify_checkpoint_keys(state, self.model.state_dict(), is_pretrain_model)
        problems = {name: keys[name] for name in ("mismatched", "missing", "unexpected") if keys[name]}
        if problems:
            message = "; ".join(f"{name} keys: {_summarise(v)}" for name, v in problems.items())
            if self.strict:
                raise ValueError(
                    f"The checkpoint does not fit this model ({keys['kind']} checkpoint): {message}. Is it from "
                    f"another architecture (e.g. single- vs multi-scale, other depth or width)? Set "
                    f"MODEL.WEIGHTS_NON_STRICT True to load what fits anyway.")
            logger.warning("Non-strict loading: %s", message)
            for k in keys["mismatched"]:
                state.pop(k)
        for k in keys["dropped"]:
            state.pop(k)
        if keys["dropped"]:
            logger.info("Dropped pretraining-only keys: %s", _summarise(keys["dropped"]))
        if keys["new"]:
            logger.info("Newly initialised (new classification layer): %s", _summarise(keys["new"]))
        logger.info("Loaded %d keys from the checkpoint (%s)", len(keys["loaded"]), keys["kind"])
        return super()._load_model(checkpoint)
