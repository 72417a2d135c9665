"""AdamW with Deformable DETR's per-parameter lr factors and full-model gradient clipping."""
import torch

from detectron2.solver.build import get_default_optimizer_params

__all__ = ["build_optimizer", "lr_factor_for"]

# Parameters whose lr is SOLVER.LINEAR_PROJ_MULTIPLIER x base (Deformable DETR's "linear projections").
_LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def lr_factor_for(name, backbone_multiplier, linear_proj_multiplier):
    """Learning-rate factor of the parameter called ``name`` (a ``named_parameters`` key)."""
    if name.startswith("backbone.") or ".backbone." in name:
        return backbone_multiplier
    if any(key in name for key in _LINEAR_PROJ_NAMES):
        return linear_proj_multiplier
    return 1.0


def _with_full_model_clipping(optimizer_cls, max_norm):
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the global gradient norm."""

    class FullModelClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClippingOptimizer.__name__ = f"FullModelClipping{optimizer_cls.__name__}"
    return FullModelClippingOptimizer


def build_optimizer(cfg, model):
    """Optimizer from ``cfg.SOLVER``: ADAMW (default) or SGD, lr factors by parameter name, and
    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: full_model`` clipping the norm over all parameters
    (Deformable DETR's grad clip 0.1); the per-parameter ``value``/``norm`` types are not supported here."""
    solver = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        lr_factor_func=lambda name: lr_factor_for(name, solver.BACKBONE_MULTIPLIER, solver.LINEAR_PROJ_MULTIPLIER),
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
        optimizer_cls = _with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
    return optimizer_cls(params, **kwargs)
