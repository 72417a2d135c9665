"""AdamW with Deformable DETR's per-parameter lr factors and full-model gradient clipping.

``build_param_groups`` and ``with_full_model_clipping`` serve both routes: ``build_optimizer(cfg, model)``
(yacs) and the LazyConfig ``optimizer`` of ``projects/JoinDet/configs/common/optim.py``.
"""
import functools
import numbers

import torch

from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils.registry import locate

__all__ = ["build_optimizer", "build_param_groups", "lr_factor_for", "with_full_model_clipping"]

# Parameters whose lr is SOLVER.LINEAR_PROJ_MULTIPLIER x base (Deformable DETR's "linear projections").
_LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def lr_factor_for(name, backbone_multiplier, linear_proj_multiplier):
    """Learning-rate factor of the parameter called ``name`` (a ``named_parameters`` key)."""
    if name.startswith("backbone.") or ".backbone." in name:
        return backbone_multiplier
    if any(key in name for key in _LINEAR_PROJ_NAMES):
        return linear_proj_multiplier
    return 1.0


def build_param_groups(model, base_lr, weight_decay, weight_decay_norm, backbone_multiplier, linear_proj_multiplier):
    """Parameter groups of ``model``: Detectron2's ``get_default_optimizer_params`` (weight decay
    ``weight_decay_norm`` on normalisation layers) with the lr factors of :func:`lr_factor_for`.

    Returns a list of dicts with ``params``, ``lr`` and ``weight_decay`` for ``torch.optim`` optimizers.
    """
    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        lr_factor_func=functools.partial(
            lr_factor_for, backbone_multiplier=backbone_multiplier, linear_proj_multiplier=linear_proj_multiplier
        ),
    )


def with_full_model_clipping(optimizer_cls, max_norm):
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the global (L2) gradient norm over
    every parameter of every group to ``max_norm`` (> 0); the subclass has a ``max_norm`` attribute.
    ``optimizer_cls`` may be given by its dotted name (e.g. ``"torch.optim.SGD"``, as a LazyConfig
    command-line override gives it)."""
    if isinstance(optimizer_cls, str):
        try:
            optimizer_cls = locate(optimizer_cls)
        except Exception as e:
            raise ValueError(f"Cannot find the optimizer class {optimizer_cls!r}") from e
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm of the full-model gradient clipping must be a number > 0, got {max_norm!r}")
    clip_norm = float(max_norm)

    class FullModelClippingOptimizer(optimizer_cls):
        max_norm = clip_norm

        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
            return super().step(closure=closure)

    FullModelClippingOptimizer.__name__ = f"FullModelClipping{optimizer_cls.__name__}"
    FullModelClippingOptimizer.__qualname__ = FullModelClippingOptimizer.__name__
    return FullModelClippingOptimizer


def build_optimizer(cfg, model):
    """Optimizer from ``cfg.SOLVER``: ADAMW (default) or SGD, lr factors by parameter name, and
    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: full_model`` clipping the norm over all parameters
    (Deformable DETR's grad clip 0.1); the per-parameter ``value``/``norm`` types are not supported here."""
    solver = cfg.SOLVER
    params = build_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        linear_proj_multiplier=solver.LINEAR_PROJ_MULTIPLIER,
    )
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"lr": solver.BASE_LR, "weight_decay": solver.WEIGHT_DECAY}
    elif name == "SGD":
        optimizer_cls = torch.optim.SGD
        kwargs = {"lr": solver.BASE_LR, "momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {solver.OPTIMIZER!r}")
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE != "full_model":
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model' for JoinDet, got {clip.CLIP_TYPE!r}")
        optimizer_cls = with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
    return optimizer_cls(params, **kwargs)
