"""The argument layout of multi-scale deformable attention, checked the same way by every implementation.

:func:`check_deform_attn_inputs` validates the arguments of
:func:`joindet.modeling.deformable_attention.ms_deform_attn_core` (the plain-PyTorch reference) and of
:func:`joindet.modeling.triton_deform_attn.ms_deform_attn_triton` (the fused kernels); both modules import it
from here, so neither imports the other for it.
"""
from typing import List, Sequence, Union

import torch
from torch import Tensor

__all__ = ["check_deform_attn_inputs"]


def _shapes_as_list(spatial_shapes: Union[Tensor, Sequence[Sequence[int]]]) -> List[List[int]]:
    """Return the ``(H_l, W_l)`` pairs as a Python list, validating the layout."""
    shapes = torch.as_tensor(spatial_shapes)
    if shapes.dim() != 2 or shapes.shape[1] != 2:
        raise ValueError(
            f"spatial_shapes must have shape (L, 2) of (H, W) pairs, got {tuple(shapes.shape)}"
        )
    if shapes.is_floating_point() or shapes.is_complex():
        raise ValueError(f"spatial_shapes must be an integer tensor, got dtype {shapes.dtype}")
    pairs = shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in pairs):
        raise ValueError(f"spatial_shapes must be positive, got {pairs}")
    return pairs


def check_deform_attn_inputs(value: Tensor, spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
                             sampling_locations: Tensor, attention_weights: Tensor) -> List[List[int]]:
    """Validate the layout of :func:`ms_deform_attn_core`'s arguments (every implementation's); return
    the ``(H_l, W_l)`` pairs. Errors name the argument and the expected shape."""
    if value.dim() != 4:
        raise ValueError(f"value must have shape (N, S, M, D), got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must have shape (N, Lq, M, L, P, 2), "
            f"got {tuple(sampling_locations.shape)}"
        )
    n, s, m, d = value.shape
    _, lq, m_loc, n_levels, n_points, _ = sampling_locations.shape
    shapes = _shapes_as_list(spatial_shapes)
    if len(shapes) != n_levels:
        raise ValueError(
            f"spatial_shapes has {len(shapes)} levels but sampling_locations has {n_levels}"
        )
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"sum of H*W over spatial_shapes {shapes} is {sum(h * w for h, w in shapes)}, "
            f"but value has S={s} positions"
        )
    if sampling_locations.shape[0] != n or m_loc != m:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"{tuple(value.shape)} in batch size or number of heads"
        )
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, n_points):
        raise ValueError(
            f"attention_weights must have shape {(n, lq, m, n_levels, n_points)}, "
            f"got {tuple(attention_weights.shape)}"
        )

    return shapes
