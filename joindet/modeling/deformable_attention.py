"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch.

The sampling is done with one :func:`torch.nn.functional.grid_sample` call per feature level,
so the same code runs on CPU and GPU, in float32 and float64, and is differentiable with
respect to the values, the sampling locations and the attention weights. It is the reference
implementation that any faster fused kernel must match.

Conventions
-----------
* Feature levels are flattened one after another, each in row-major order, so a tensor of
  per-position features has shape ``(N, S, ...)`` with ``S = sum_l H_l * W_l``.
* Locations are normalised ``(x, y)`` in ``[0, 1]`` where 0 and 1 are the outer edges of the
  feature map: the centre of pixel column ``i`` is at ``(i + 0.5) / W``. Samples that fall
  outside the map read zeros (``grid_sample(..., align_corners=False, padding_mode="zeros")``).

Implementations
---------------
:class:`MSDeformAttn` calls :func:`ms_deform_attn`, which dispatches between this reference
(``"plain"``) and the fused Triton kernels of :mod:`joindet.modeling.triton_deform_attn`
(``"triton"``). The choice is the ``impl`` argument, else the environment variable
``JOINDET_DEFORM_ATTN``:

* ``auto`` (default): Triton for CUDA tensors when triton is importable and all inputs are
  float32, float16 or bfloat16; the plain path otherwise (CPU tensors, float64, no triton).
* ``plain``: always the reference.
* ``triton``: always the Triton kernels; raises where they cannot run (no triton, an unsupported
  dtype, CPU tensors without ``TRITON_INTERPRET=1``).
"""

import math
import os
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deform_attn_layout import _shapes_as_list, check_deform_attn_inputs

__all__ = ["DEFORM_ATTN_ENV", "ms_deform_attn", "ms_deform_attn_core", "MSDeformAttn"]

# environment variable choosing the implementation of ms_deform_attn: auto | plain | triton
DEFORM_ATTN_ENV = "JOINDET_DEFORM_ATTN"
_IMPLS = ("auto", "plain", "triton")


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sample multi-scale values at given locations and sum them with attention weights.

    Args:
        value: (N, S, M, D) float tensor, per-head values of all levels, flattened level after
            level (row-major inside a level), ``S = sum_l H_l * W_l``.
        spatial_shapes: (L, 2) int64 tensor (or nested sequence) of ``(H_l, W_l)``.
        sampling_locations: (N, Lq, M, L, P, 2) float tensor of normalised ``(x, y)``; 0 and 1
            are the outer edges of each map, pixel centre ``i`` is at ``(i + 0.5) / W``.
            Locations outside ``[0, 1]`` read zeros where they leave the map.
        attention_weights: (N, Lq, M, L, P) float tensor, normally softmaxed over ``L * P``.

    Returns:
        (N, Lq, M * D) tensor (dtype promoted from ``value`` and ``attention_weights``): for
        every query and head, the attention-weighted sum of the bilinearly interpolated
        values; heads are concatenated.
    """
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = check_deform_attn_inputs(value, spatial_shapes, sampling_locations, attention_weights)

    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1 and 1 are the
    # outer edges of the map, which is exactly the [0, 1] convention of the locations.
    grids = (sampling_locations * 2.0 - 1.0).to(value.dtype)
    per_level = value.split([h * w for h, w in shapes], dim=1)
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W): one image per (batch, head) pair.
        value_l = per_level[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, n_points, 2)
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # (N*M, D, Lq, P)
    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P)
    sampled_all = torch.stack(sampled, dim=3).flatten(3)
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    out = (sampled_all * weights).sum(dim=-1)  # (N*M, D, Lq)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: Optional[str] = None,
) -> Tensor:
    """:func:`ms_deform_attn_core` or its fused Triton equivalent (same arguments and result).

    Args:
        impl: ``"auto"``, ``"plain"`` or ``"triton"`` (see the module docstring); None reads
            ``$JOINDET_DEFORM_ATTN`` (default ``"auto"``).
    """
    if impl is None:
        impl = os.environ.get(DEFORM_ATTN_ENV, "").strip().lower() or "auto"
    if impl not in _IMPLS:
        raise ValueError(f"deformable attention impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "plain" or (impl == "auto" and not value.is_cuda):
        return ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)

    from . import triton_deform_attn  # imports triton (guarded) only when it may be used

    if impl == "auto":
        dtypes_ok = all(t.dtype in triton_deform_attn.SUPPORTED_DTYPES
                        for t in (value, sampling_locations, attention_weights))
        if not (dtypes_ok and triton_deform_attn.triton_available(value)):
            return ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)
    return triton_deform_attn.ms_deform_attn_triton(
        value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR, Sec. 4.1).

    Each query attends, in each of ``n_heads`` heads, to ``n_points`` sampled positions on each
    of ``n_levels`` feature levels around its reference point; sampling offsets and attention
    weights are predicted from the query by linear layers.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: channel width C of queries and input features.
            n_levels: number of feature levels L.
            n_heads: number of attention heads M; must divide ``d_model``.
            n_points: number of sampling points P per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if min(d_model, n_levels, n_heads, n_points) <= 0:
            raise ValueError(
                "d_model, n_levels, n_heads and n_points must be positive, got "
                f"{(d_model, n_levels, n_heads, n_points)}"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Initialisation of the paper: offsets start on rings, uniform attention weights.

        Head ``h`` points in direction ``2 * pi * h / n_heads``, scaled so that the larger
        coordinate has magnitude 1; point ``k`` lies at ``(k + 1)`` times that direction, on
        every level.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float64)  # (P,)
        ring = direction[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
        ring = ring.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1).to(self.sampling_offsets.bias))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (N, Lq, C) float tensor.
            reference_points: (N, Lq, L, 2) normalised ``(x, y)`` in ``[0, 1]`` (offsets are
                divided by ``(W_l, H_l)`` of each level), or (N, Lq, L, 4) normalised boxes
                ``(cx, cy, w, h)`` (offsets are scaled by ``0.5 * (w, h) / n_points``).
            input_flatten: (N, S, C) float tensor, all levels flattened,
                ``S = sum_l H_l * W_l``.
            input_spatial_shapes: (L, 2) int64 tensor of ``(H_l, W_l)``.
            input_level_start_index: (L,) int64 tensor, index in ``S`` where each level starts.
            input_padding_mask: optional (N, S) bool tensor, True at padded positions; their
                values are zeroed before sampling.

        Returns:
            (N, Lq, C) tensor.
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must have shape (N, Lq, {self.d_model}), got {tuple(query.shape)}"
            )
        if input_flatten.dim() != 3 or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"input_flatten must have shape (N, S, {self.d_model}), "
                f"got {tuple(input_flatten.shape)}"
            )
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if input_flatten.shape[0] != n:
            raise ValueError(
                f"query has batch size {n} but input_flatten has {input_flatten.shape[0]}"
            )
        if reference_points.dim() != 4 or reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                "reference_points must have shape (N, Lq, L, 2) or (N, Lq, L, 4), "
                f"got {tuple(reference_points.shape)}"
            )
        if tuple(reference_points.shape[:3]) != (n, lq, self.n_levels):
            raise ValueError(
                f"reference_points must start with (N, Lq, L) = {(n, lq, self.n_levels)}, "
                f"got {tuple(reference_points.shape)}"
            )
        shapes = _shapes_as_list(input_spatial_shapes)
        if len(shapes) != self.n_levels:
            raise ValueError(
                f"input_spatial_shapes has {len(shapes)} levels, module expects {self.n_levels}"
            )
        sizes = [h * w for h, w in shapes]
        if sum(sizes) != s:
            raise ValueError(
                f"sum of H*W over input_spatial_shapes {shapes} is {sum(sizes)}, "
                f"but input_flatten has S={s} positions"
            )
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        if torch.as_tensor(input_level_start_index).reshape(-1).tolist() != starts:
            raise ValueError(
                f"input_level_start_index must be {starts} for spatial shapes {shapes}, "
                f"got {torch.as_tensor(input_level_start_index).tolist()}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if tuple(input_padding_mask.shape) != (n, s) or input_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"input_padding_mask must be a bool tensor of shape {(n, s)}, got "
                    f"{input_padding_mask.dtype} {tuple(input_padding_mask.shape)}"
                )
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)

        m, n_levels, n_points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(n, lq, m, n_levels, n_points, 2)
        weights = self.attention_weights(query).view(n, lq, m, n_levels * n_points)
        weights = weights.softmax(dim=-1).view(n, lq, m, n_levels, n_points)

        ref = reference_points[:, :, None, :, None, :]  # (N, Lq, 1, L, 1, 2 or 4)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l).
            wh = torch.tensor(
                [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
            )
            locations = ref + offsets / wh[None, None, None, :, None, :]
        else:
            # Offsets are relative to the box: +-n_points spans half its width/height.
            locations = ref[..., :2] + offsets * (0.5 / n_points) * ref[..., 2:]

        out = ms_deform_attn(value, shapes, locations, weights)
        return self.output_proj(out)
