"""The Triton deformable attention against the plain path, in Triton's interpreter on CPU tensors
(test code, not shipped; run by tests/test_triton_deform_attn.py)::

    TRITON_INTERPRET=1 python tests/helpers/triton_deform_attn_check.py

``TRITON_INTERPRET=1`` has to be in the environment before triton is imported (the project's
imports pull triton in), hence a process of its own; the variable is also set here, before any
import, in case the caller forgot. Prints one JSON object: per case and per compared tensor the
max absolute difference to the float64 plain path run on the same (rounded) inputs, the largest
magnitude of the reference, and their ratio ``max_rel``; plus a few dispatcher checks and timings.
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from joindet.modeling import triton_deform_attn as tda  # noqa: E402
from joindet.modeling.deformable_attention import (  # noqa: E402
    DEFORM_ATTN_ENV,
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_core,
)

NAMES = ("out", "grad_value", "grad_loc", "grad_weights")


def _diff(got, ref):
    """Max abs difference, reference scale and their ratio of two tensors (float64 compare)."""
    err = (got.detach().double() - ref.detach().double()).abs().max().item()
    scale = ref.detach().abs().max().item()
    return {"max_abs": err, "ref_absmax": scale, "max_rel": err / scale if scale > 0 else err}


def _compare(shapes, value, locs, weights, dtype):
    """Forward and the three gradients of a random linear functional of the output: the Triton
    path on ``dtype`` inputs against the float64 plain path on the same rounded inputs."""
    gen = torch.Generator().manual_seed(1234)
    inputs = [t.to(dtype).requires_grad_() for t in (value, locs, weights)]
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    shapes_t = torch.tensor(shapes)

    out = tda.ms_deform_attn_triton(inputs[0], shapes_t, inputs[1], inputs[2])
    ref = ms_deform_attn_core(ref_inputs[0], shapes_t, ref_inputs[1], ref_inputs[2])
    probe = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * probe).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * probe).sum(), ref_inputs)
    result = {name: _diff(a, b) for name, a, b in zip(NAMES, (out, *grads), (ref, *ref_grads))}
    result["dtypes"] = [str(t.dtype) for t in (out, *grads)]
    return result


def _random_inputs(seed, n, lq, m, d, shapes, n_points, lo=-0.25, hi=1.25):
    """Random values, locations uniform in [lo, hi] (so some leave the maps) and softmaxed weights."""
    gen = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=torch.float64)
    locs = lo + (hi - lo) * torch.rand(n, lq, m, n_levels, n_points, 2, generator=gen, dtype=torch.float64)
    logits = torch.randn(n, lq, m, n_levels * n_points, generator=gen, dtype=torch.float64)
    weights = logits.softmax(-1).view(n, lq, m, n_levels, n_points)
    return value, locs, weights


def _centres_and_edges():
    """Samples at exact pixel centres, on the map edges and just outside (power-of-two sizes, so
    that the pixel coordinates ``loc * W - 0.5`` are exact in both paths)."""
    shapes = [(4, 8), (2, 2)]
    points = [  # (x, y) per level: (i + 0.5) / W centres, 0 / 1 edges, outside
        [(2.5 / 8, 1.5 / 4), (0.0, 0.0), (1.0, 1.0), (7.5 / 8, 3.5 / 4), (0.5 / 8, 1.0),
         (-0.5 / 8, 0.5 / 4), (1.0 + 0.5 / 8, 2.5 / 4), (0.75, 0.625)],
        [(0.25, 0.75), (1.0, 0.0), (0.5, 0.5), (0.0, 0.25), (-0.25, -0.25),
         (1.25, 0.75), (0.75, 1.0), (0.25, 0.25)],
    ]
    gen = torch.Generator().manual_seed(7)
    n, lq, m, d, n_points = 1, 1, 2, 5, 4
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=torch.float64)
    locs = torch.tensor(points, dtype=torch.float64)  # (L, 8, 2) -> (N, Lq, M, L, P, 2)
    locs = locs.view(len(shapes), lq, m, n_points, 2).permute(1, 2, 0, 3, 4)[None].contiguous()
    weights = torch.rand(n, lq, m, len(shapes), n_points, generator=gen, dtype=torch.float64)
    return shapes, value, locs, weights


def _centre_sample_is_exact():
    """One sample exactly on pixel (row 1, column 2) of a 4x8 map returns weight * that pixel."""
    shapes = [(4, 8)]
    value = torch.randn(1, 32, 1, 3, generator=torch.Generator().manual_seed(3))
    locs = torch.tensor([2.5 / 8, 1.5 / 4]).view(1, 1, 1, 1, 1, 2)
    weights = torch.full((1, 1, 1, 1, 1), 0.75)
    out = tda.ms_deform_attn_triton(value, torch.tensor(shapes), locs, weights)
    return (out.view(3) - 0.75 * value[0, 1 * 8 + 2, 0]).abs().max().item()


def _dispatch_checks():
    """The dispatcher on CPU tensors under the interpreter."""
    shapes = [(3, 5), (2, 2)]
    value, locs, weights = (t.float() for t in _random_inputs(5, 1, 3, 2, 4, shapes, 2))
    shapes_t = torch.tensor(shapes)
    checks = {
        "triton_available_cpu": tda.triton_available(value),
        # auto keeps CPU tensors on the reference, bit for bit
        "auto_cpu_is_plain": torch.equal(ms_deform_attn(value, shapes_t, locs, weights, impl="auto"),
                                         ms_deform_attn_core(value, shapes_t, locs, weights)),
        "forced_triton_matches": torch.equal(
            ms_deform_attn(value, shapes_t, locs, weights, impl="triton"),
            tda.ms_deform_attn_triton(value, shapes_t, locs, weights)),
    }
    try:
        ms_deform_attn(value.double(), shapes_t, locs.double(), weights.double(), impl="triton")
        checks["float64_forced_triton_raises"] = False
    except TypeError:
        checks["float64_forced_triton_raises"] = True
    return checks


def _module_check():
    """MSDeformAttn forward and parameter gradients with $JOINDET_DEFORM_ATTN=triton vs plain."""
    torch.manual_seed(11)
    shapes = [(4, 3), (2, 2)]
    module = MSDeformAttn(d_model=12, n_levels=2, n_heads=2, n_points=2)
    with torch.no_grad():  # non-trivial offsets and weights
        module.sampling_offsets.weight.normal_(0, 0.5)
        module.attention_weights.weight.normal_(0, 0.5)
    s = sum(h * w for h, w in shapes)
    query = torch.randn(2, 3, 12)
    feats = torch.randn(2, s, 12)
    refs = torch.rand(2, 3, 2, 2)
    starts = torch.tensor([0, 12])
    results = {}
    for impl in ("plain", "triton"):
        os.environ[DEFORM_ATTN_ENV] = impl
        module.zero_grad()
        out = module(query, refs, feats, torch.tensor(shapes), starts)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[impl] = [out.detach()] + [p.grad.detach().clone() for p in module.parameters()]
    del os.environ[DEFORM_ATTN_ENV]
    diffs = [_diff(a, b) for a, b in zip(results["triton"], results["plain"])]
    return {"out": diffs[0], "params_max_rel": max(d["max_rel"] for d in diffs[1:])}


def main():
    report = {"interpreted": tda._kernels_interpreted(), "cases": {}}
    start = time.perf_counter()
    random_shapes = [(3, 5), (1, 7), (4, 2)]  # non-square, a 1 x W level, unequal sizes
    value, locs, weights = _random_inputs(0, 2, 5, 2, 12, random_shapes, 3)
    report["cases"]["random_fp32"] = _compare(random_shapes, value, locs, weights, torch.float32)
    report["cases"]["random_fp16"] = _compare(random_shapes, value, locs, weights, torch.float16)
    report["cases"]["random_bf16"] = _compare(random_shapes, value, locs, weights, torch.bfloat16)
    # D = 70 > the 64-channel block: two forward programs per triple, two backward chunks
    wide_shapes = [(2, 3), (3, 1)]
    value, locs, weights = _random_inputs(1, 1, 3, 1, 70, wide_shapes, 2)
    report["cases"]["wide_d_fp32"] = _compare(wide_shapes, value, locs, weights, torch.float32)
    shapes, value, locs, weights = _centres_and_edges()
    report["cases"]["centres_edges_fp32"] = _compare(shapes, value, locs, weights, torch.float32)
    report["centre_sample_abs_err"] = _centre_sample_is_exact()
    report["dispatch"] = _dispatch_checks()
    report["module"] = _module_check()
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report))


if __name__ == "__main__":
    main()
