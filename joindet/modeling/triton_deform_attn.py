"""Fused multi-scale deformable attention in Triton (forward and backward).

:func:`ms_deform_attn_triton` computes exactly what the plain-PyTorch reference
:func:`joindet.modeling.deformable_attention.ms_deform_attn_core` computes (same arguments, same
conventions, same result up to float32 rounding), but in one kernel launch for the forward and one
for the backward, without materialising the ``(N*M, D, Lq, L*P)`` tensor of sampled values that the
reference builds level by level with ``grid_sample``.

Memory layout (all tensors made contiguous first)
-------------------------------------------------
* ``value`` (N, S, M, D): element ``(n, s, m, d)`` at ``((n * S + s) * M + m) * D + d``.
* ``sampling_locations`` (N, Lq, M, L, P, 2) and ``attention_weights`` (N, Lq, M, L, P): the
  ``L * P`` samples of one ``(n, q, m)`` triple are contiguous; the triple's flat index
  ``row = (n * Lq + q) * M + m`` selects them.
* output (N, Lq, M * D) is the same memory as (N, Lq, M, D): the D channels of ``row`` start at
  ``row * D``.
* ``levels`` (L, 3) int32: ``(H_l, W_l, start_l)``, ``start_l`` the cumulative ``H * W`` of the
  levels before ``l`` (where level ``l`` begins in ``S``).

Kernels
-------
* Forward, grid ``(N * Lq * M, cdiv(D, BLOCK_D))``: program ``(row, j)`` handles one query/head
  triple and channels ``[j * BLOCK_D, (j + 1) * BLOCK_D)``. It works on a ``(BLOCK_LP, BLOCK_D)``
  tile, all ``L * P`` samples of the triple at once (``BLOCK_LP`` = next power of two >= ``L * P``,
  the sample's level is ``lp // P``): four masked gathers of the bilinear corners (a corner outside
  its map reads zero, which is ``grid_sample``'s zeros padding), weighted by the corner weights
  times the attention weight, reduced over the samples into the ``BLOCK_D`` outputs. Every output
  element is written by exactly one program: no races.
* Backward, grid ``(N * Lq * M,)``: program ``row`` recomputes the corners of its samples and loops
  over the D channels in chunks of ``BLOCK_D``. Per chunk it

  - scatters ``attention_weight * corner_weight * grad_out`` into ``grad_value`` with
    ``tl.atomic_add`` (float32 buffer): different queries sample the same value positions, so
    these are the only writes that programs share, and atomics make them race-free (the order of
    the additions, hence the last bits of ``grad_value``, is not deterministic);
  - accumulates, per sample, ``sum_d grad_out * sampled_value`` (the attention-weight gradient)
    and ``sum_d grad_out * d sampled_value / dx`` (and ``dy``) in registers.

  After the loop it writes the per-sample gradients of the weights and of the locations (the
  pixel-coordinate derivative times ``attention_weight`` times ``W`` or ``H``, since
  ``x_pixel = x * W - 0.5``). These rows belong to the program alone: plain stores, no races.

All arithmetic is float32 whatever the input dtype (float32, float16 or bfloat16, mixed dtypes
allowed as autocast produces them); the output has the dtype the reference would give
(``value``'s promoted with ``attention_weights``'), gradients have their inputs' dtypes. The
backward does not support double backward.

Availability
------------
Triton is imported guarded: without it this module still imports, :func:`triton_available`
returns False and :func:`ms_deform_attn_triton` raises. With ``TRITON_INTERPRET=1`` in the
environment *when this module is first imported*, Triton's interpreter runs the kernels on CPU
tensors (slow; for tests).
"""

import contextlib
import functools
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .deform_attn_layout import check_deform_attn_inputs

try:  # keep the project importable without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["SUPPORTED_DTYPES", "ms_deform_attn_triton", "triton_available"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Largest channel block of one program (the backward loops over blocks of this size, the forward
# spreads them over the second grid axis).
_MAX_BLOCK_D = 64


if triton is not None:

    @triton.jit
    def _sample_setup(loc_ptr, attn_ptr, levels_ptr, row, BLOCK_LP: tl.constexpr,
                      N_LEVELS: tl.constexpr, N_POINTS: tl.constexpr):
        """Per-sample quantities of the ``L * P`` samples of triple ``row`` (vectors of BLOCK_LP).

        Returns the mask of real samples, the attention weights, the level sizes ``h``, ``w`` and
        start ``start``, the top-left corner ``(x0, y0)`` (int32) and the fractions ``fx``, ``fy``
        of the continuous pixel position ``(x, y) = (loc_x * W - 0.5, loc_y * H - 0.5)``.
        """
        offs = tl.arange(0, BLOCK_LP)
        lp_mask = offs < N_LEVELS * N_POINTS
        lvl = offs // N_POINTS
        h = tl.load(levels_ptr + lvl * 3, mask=lp_mask, other=1)
        w = tl.load(levels_ptr + lvl * 3 + 1, mask=lp_mask, other=1)
        start = tl.load(levels_ptr + lvl * 3 + 2, mask=lp_mask, other=0)
        sample = row.to(tl.int64) * (N_LEVELS * N_POINTS) + offs
        loc_x = tl.load(loc_ptr + sample * 2, mask=lp_mask, other=0.0).to(tl.float32)
        loc_y = tl.load(loc_ptr + sample * 2 + 1, mask=lp_mask, other=0.0).to(tl.float32)
        attn = tl.load(attn_ptr + sample, mask=lp_mask, other=0.0).to(tl.float32)
        wf = w.to(tl.float32)
        hf = h.to(tl.float32)
        x = loc_x * wf - 0.5
        y = loc_y * hf - 0.5
        # Beyond [-2, W + 1] all four corners are outside the map anyway; clamping keeps the
        # integer conversion defined for locations far away without changing any result.
        x = tl.minimum(tl.maximum(x, -2.0), wf + 1.0)
        y = tl.minimum(tl.maximum(y, -2.0), hf + 1.0)
        x0f = tl.floor(x)
        y0f = tl.floor(y)
        fx = x - x0f
        fy = y - y0f
        return lp_mask, attn, h, w, start, x0f.to(tl.int32), y0f.to(tl.int32), fx, fy

    @triton.jit
    def _corner(lp_mask, h, w, start, cx, cy):
        """Position in ``S`` (0 where invalid) and validity of the corner pixels ``(cx, cy)``."""
        valid = lp_mask & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        pos = tl.where(valid, start + cy * w + cx, 0)
        return pos.to(tl.int64), valid

    @triton.jit
    def _gather(base, pos, valid, stride, col, mask_d):
        """(BLOCK_LP, BLOCK_D) float32 tile ``base[pos * stride + col]``, zero where invalid."""
        tile = tl.load(base + pos[:, None] * stride + col, mask=valid[:, None] & mask_d, other=0.0)
        return tile.to(tl.float32)

    @triton.jit
    def _ms_deform_attn_fwd_kernel(
        value_ptr, levels_ptr, loc_ptr, attn_ptr, out_ptr,
        S, Lq, M, D,
        N_LEVELS: tl.constexpr, N_POINTS: tl.constexpr,
        BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Program ``(row, j)``: output channels ``[j * BLOCK_D, (j + 1) * BLOCK_D)`` of triple
        ``row = (n * Lq + q) * M + m`` (see the module docstring)."""
        row = tl.program_id(0)
        m = row % M
        n = row // (Lq * M)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D

        lp_mask, attn, h, w, start, x0, y0, fx, fy = _sample_setup(
            loc_ptr, attn_ptr, levels_ptr, row, BLOCK_LP, N_LEVELS, N_POINTS)

        # value[n, :, m, :] as a (S, D) matrix with row stride M * D
        base = value_ptr + n.to(tl.int64) * S * M * D + m * D
        stride = M * D
        col = offs_d[None, :]
        mask_d = d_mask[None, :]
        gx = 1.0 - fx
        gy = 1.0 - fy
        pos, ok = _corner(lp_mask, h, w, start, x0, y0)
        acc = (attn * gx * gy)[:, None] * _gather(base, pos, ok, stride, col, mask_d)
        pos, ok = _corner(lp_mask, h, w, start, x0 + 1, y0)
        acc += (attn * fx * gy)[:, None] * _gather(base, pos, ok, stride, col, mask_d)
        pos, ok = _corner(lp_mask, h, w, start, x0, y0 + 1)
        acc += (attn * gx * fy)[:, None] * _gather(base, pos, ok, stride, col, mask_d)
        pos, ok = _corner(lp_mask, h, w, start, x0 + 1, y0 + 1)
        acc += (attn * fx * fy)[:, None] * _gather(base, pos, ok, stride, col, mask_d)
        out = tl.sum(acc, axis=0)
        tl.store(out_ptr + row.to(tl.int64) * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)

    @triton.jit
    def _ms_deform_attn_bwd_kernel(
        value_ptr, levels_ptr, loc_ptr, attn_ptr, grad_out_ptr,
        grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
        S, Lq, M, D,
        N_LEVELS: tl.constexpr, N_POINTS: tl.constexpr,
        BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Program ``row``: all gradients contributed by the ``L * P`` samples of triple ``row``,
        looping over the D channels in blocks of ``BLOCK_D`` (see the module docstring).

        ``grad_value_ptr`` is a zeroed float32 buffer shaped like ``value`` (atomically added to);
        ``grad_loc_ptr`` and ``grad_attn_ptr`` are float32 buffers shaped like the locations and
        the weights (each element stored once).
        """
        row = tl.program_id(0)
        m = row % M
        n = row // (Lq * M)

        lp_mask, attn, h, w, start, x0, y0, fx, fy = _sample_setup(
            loc_ptr, attn_ptr, levels_ptr, row, BLOCK_LP, N_LEVELS, N_POINTS)
        # corners: 00 = (x0, y0), 01 = (x0 + 1, y0), 10 = (x0, y0 + 1), 11 = (x0 + 1, y0 + 1)
        pos00, ok00 = _corner(lp_mask, h, w, start, x0, y0)
        pos01, ok01 = _corner(lp_mask, h, w, start, x0 + 1, y0)
        pos10, ok10 = _corner(lp_mask, h, w, start, x0, y0 + 1)
        pos11, ok11 = _corner(lp_mask, h, w, start, x0 + 1, y0 + 1)
        gx = 1.0 - fx
        gy = 1.0 - fy
        w00 = gx * gy
        w01 = fx * gy
        w10 = gx * fy
        w11 = fx * fy

        offset = n.to(tl.int64) * S * M * D + m * D  # of value[n, 0, m, 0]
        value_base = value_ptr + offset
        grad_value_base = grad_value_ptr + offset
        stride = M * D
        grad_attn = tl.zeros((BLOCK_LP,), dtype=tl.float32)
        grad_x = tl.zeros((BLOCK_LP,), dtype=tl.float32)  # sum_d grad_out * d sample / d x_pixel
        grad_y = tl.zeros((BLOCK_LP,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_mask = offs_d < D
            col = offs_d[None, :]
            mask_d = d_mask[None, :]
            g = tl.load(grad_out_ptr + row.to(tl.int64) * D + offs_d, mask=d_mask, other=0.0)
            g = g.to(tl.float32)[None, :]
            v00 = _gather(value_base, pos00, ok00, stride, col, mask_d)
            v01 = _gather(value_base, pos01, ok01, stride, col, mask_d)
            v10 = _gather(value_base, pos10, ok10, stride, col, mask_d)
            v11 = _gather(value_base, pos11, ok11, stride, col, mask_d)

            sampled = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            grad_attn += tl.sum(sampled * g, axis=1)
            d_dx = gy[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)
            d_dy = gx[:, None] * (v10 - v00) + fx[:, None] * (v11 - v01)
            grad_x += tl.sum(d_dx * g, axis=1)
            grad_y += tl.sum(d_dy * g, axis=1)

            ag = attn[:, None] * g
            tl.atomic_add(grad_value_base + pos00[:, None] * stride + col, w00[:, None] * ag,
                          mask=ok00[:, None] & mask_d, sem="relaxed")
            tl.atomic_add(grad_value_base + pos01[:, None] * stride + col, w01[:, None] * ag,
                          mask=ok01[:, None] & mask_d, sem="relaxed")
            tl.atomic_add(grad_value_base + pos10[:, None] * stride + col, w10[:, None] * ag,
                          mask=ok10[:, None] & mask_d, sem="relaxed")
            tl.atomic_add(grad_value_base + pos11[:, None] * stride + col, w11[:, None] * ag,
                          mask=ok11[:, None] & mask_d, sem="relaxed")

        sample = row.to(tl.int64) * (N_LEVELS * N_POINTS) + tl.arange(0, BLOCK_LP)
        tl.store(grad_attn_ptr + sample, grad_attn, mask=lp_mask)
        tl.store(grad_loc_ptr + sample * 2, attn * grad_x * w.to(tl.float32), mask=lp_mask)
        tl.store(grad_loc_ptr + sample * 2 + 1, attn * grad_y * h.to(tl.float32), mask=lp_mask)


def _kernels_interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return triton is not None and type(_ms_deform_attn_fwd_kernel).__name__ == "InterpretedFunction"


def triton_available(tensor: Tensor) -> bool:
    """Whether the Triton kernels can run on ``tensor``'s device: triton imports and the tensor is
    on CUDA, or the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when this module
    was imported), which also takes CPU tensors."""
    if triton is None:
        return False
    return tensor.is_cuda or _kernels_interpreted()


@functools.lru_cache(maxsize=64)
def _level_table(shapes: Tuple[Tuple[int, int], ...], device: torch.device) -> Tensor:
    """(L, 3) int32 tensor of ``(H, W, start)`` on ``device`` (cached: built once per layout)."""
    rows, start = [], 0
    for h, w in shapes:
        rows.append((h, w, start))
        start += h * w
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _launch_config(n_levels: int, n_points: int, d: int) -> Tuple[int, int, int]:
    """``(BLOCK_LP, BLOCK_D, num_warps)`` of both kernels for this layout."""
    block_lp = triton.next_power_of_2(n_levels * n_points)
    block_d = min(triton.next_power_of_2(d), _MAX_BLOCK_D)
    num_warps = max(1, min(8, block_lp * block_d // 256))
    return block_lp, block_d, num_warps


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the two kernels; inputs must be contiguous and validated."""

    @staticmethod
    def forward(ctx, value, levels, sampling_locations, attention_weights):
        n, s, m, d = value.shape
        _, lq, _, n_levels, n_points, _ = sampling_locations.shape
        out_dtype = torch.promote_types(value.dtype, attention_weights.dtype)
        out = torch.empty((n, lq, m * d), dtype=out_dtype, device=value.device)
        block_lp, block_d, num_warps = _launch_config(n_levels, n_points, d)
        rows = n * lq * m
        if rows > 0 and d > 0:
            with torch.cuda.device(value.device) if value.is_cuda else contextlib.nullcontext():
                _ms_deform_attn_fwd_kernel[(rows, triton.cdiv(d, block_d))](
                    value, levels, sampling_locations, attention_weights, out,
                    s, lq, m, d,
                    N_LEVELS=n_levels, N_POINTS=n_points, BLOCK_LP=block_lp, BLOCK_D=block_d,
                    num_warps=num_warps,
                )
        ctx.save_for_backward(value, levels, sampling_locations, attention_weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, levels, sampling_locations, attention_weights = ctx.saved_tensors
        n, s, m, d = value.shape
        _, lq, _, n_levels, n_points, _ = sampling_locations.shape
        grad_out = grad_out.contiguous()
        f32 = dict(dtype=torch.float32, device=value.device)
        grad_value = torch.zeros(value.shape, **f32)
        grad_loc = torch.zeros(sampling_locations.shape, **f32)
        grad_attn = torch.zeros(attention_weights.shape, **f32)
        block_lp, block_d, num_warps = _launch_config(n_levels, n_points, d)
        rows = n * lq * m
        if rows > 0 and d > 0:
            with torch.cuda.device(value.device) if value.is_cuda else contextlib.nullcontext():
                _ms_deform_attn_bwd_kernel[(rows,)](
                    value, levels, sampling_locations, attention_weights, grad_out,
                    grad_value, grad_loc, grad_attn,
                    s, lq, m, d,
                    N_LEVELS=n_levels, N_POINTS=n_points, BLOCK_LP=block_lp, BLOCK_D=block_d,
                    num_warps=num_warps,
                )
        needs = ctx.needs_input_grad
        return (
            grad_value.to(value.dtype) if needs[0] else None,
            None,
            grad_loc.to(sampling_locations.dtype) if needs[2] else None,
            grad_attn.to(attention_weights.dtype) if needs[3] else None,
        )


def _check_inputs(value: Tensor, spatial_shapes, sampling_locations: Tensor,
                  attention_weights: Tensor) -> List[List[int]]:
    """Validate the layout as :func:`ms_deform_attn_core` does, and the dtypes and devices the kernels
    take; return the ``(H, W)`` pairs."""
    shapes = check_deform_attn_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"the Triton deformable attention supports {SUPPORTED_DTYPES}; "
                            f"{name} is {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}")
    return shapes


def ms_deform_attn_triton(
    value: Tensor,
    spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention with the fused Triton kernels.

    Same arguments, conventions and result as
    :func:`joindet.modeling.deformable_attention.ms_deform_attn_core` (the reference); see there.
    Differentiable with respect to ``value``, ``sampling_locations`` and ``attention_weights``
    (first order). Inputs must be float32, float16 or bfloat16 and on one device where
    :func:`triton_available` holds.
    """
    if triton is None:
        raise RuntimeError("ms_deform_attn_triton needs the 'triton' package, which is not importable")
    shapes = _check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    if not triton_available(value):
        raise RuntimeError(f"the Triton kernels cannot run on {value.device} tensors (CUDA needed, or "
                           "TRITON_INTERPRET=1 set before importing joindet.modeling.triton_deform_attn)")
    levels = _level_table(tuple((int(h), int(w)) for h, w in shapes), value.device)
    return _MSDeformAttnFunction.apply(
        value.contiguous(), levels, sampling_locations.contiguous(), attention_weights.contiguous())
