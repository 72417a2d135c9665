"""
GPU check of the fused Triton deformable attention against the plain path::

    python -m joindet.benchmarks.gpu_deform_attn [--out gpu_deform_attn.json] [--iters 20] [--warmup 5] \\
        [--dtypes float32,bfloat16] [--cases decoder,encoder]

Why: :mod:`joindet.modeling.triton_deform_attn` replaces the per-level ``grid_sample`` of
:func:`~joindet.modeling.deformable_attention.ms_deform_attn_core` by one fused kernel for the forward
and one for the backward; this checks on a CUDA device that it computes the same thing and measures
what it buys. Sizes are Deformable DETR's: batch 2 of 800 x 1333 images, 4 levels at strides 8, 16,
32, 64 (S = 22223 positions), 8 heads of 32 channels, 4 points per head and level; two cases: the
``decoder`` (300 queries at random reference points) and the ``encoder`` (one query per position,
Lq = S, reference points at the pixel centres). Sampling offsets are a few pixels, so some samples
leave the maps.

Correctness: inputs drawn in float64 on the CPU and rounded to each dtype; the reference is the
plain path in float64 on the CPU on the rounded inputs (forward, and the gradients of a random linear
functional of the output with respect to the values, locations and weights). Reported per tensor:
max |got - ref| and that over max |ref| (``max_rel``), checked against a tolerance per dtype. The
location gradient is compared only where both pixel coordinates are at least 1e-3 pixel away from an
integer: bilinear interpolation is not differentiable on the pixel grid, and the float32 rounding of
``loc * W - 0.5`` may put such a sample on the other side of it (the unmasked maximum is reported
too). The plain path on the GPU is checked the same way, for scale.

Timings: median over ``--iters`` calls after ``--warmup`` calls, ``torch.cuda.synchronize`` around
each, of the forward (under ``no_grad``) and of forward + backward; peak memory is
``torch.cuda.max_memory_allocated`` during one such call minus what was allocated before it (the
inputs). Prints two Markdown tables and writes everything as JSON to ``--out``; exits with status 1
when a correctness check of the Triton path fails, or at once without a CUDA device.
"""
import argparse
import math
import statistics
import sys
import time

import torch

from joindet.benchmarks import markdown_table, write_rows

IMAGE_SIZE = (800, 1333)
STRIDES = (8, 16, 32, 64)
N, M, D, P = 2, 8, 32, 4
DECODER_QUERIES = 300
DEVICE = "cuda"
OFFSET_PIXELS = 2.0  # std of the sampling offsets, in pixels of each level
# on max_rel, (forward, gradients); low precision outputs are rounded to their dtype
TOLERANCES = {"float32": (1e-5, 1e-4), "bfloat16": (1e-2, 3e-2), "float16": (2e-3, 5e-3)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECK_COLUMNS = ["case", "dtype", "impl", "tensor", "max_abs", "max_rel", "tol", "ok"]
TIME_COLUMNS = ["case", "dtype", "impl", "fwd_ms", "fwd_bwd_ms", "fwd_peak_mib", "fwd_bwd_peak_mib",
                "speedup_fwd", "speedup_fwd_bwd"]


def level_shapes(image_size=IMAGE_SIZE, strides=STRIDES):
    """``(H, W)`` of the feature maps of an image at the given strides (rounded up, as convolutions do)."""
    return [(math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)) for s in strides]


def make_inputs(case, shapes, seed=0):
    """Float64 CPU ``(value, locations, weights)`` of a case; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    if case == "decoder":
        ref = torch.rand(N, DECODER_QUERIES, 2, generator=gen, dtype=torch.float64)
    else:  # encoder: one query per position, at its pixel centre
        centres = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                    indexing="ij")
            centres.append(torch.stack([(xs.reshape(-1) + 0.5) / w, (ys.reshape(-1) + 0.5) / h], dim=-1))
        ref = torch.cat(centres)[None].expand(N, s, 2)
    lq = ref.shape[1]
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)  # (L, 2)
    offsets = OFFSET_PIXELS * torch.randn(N, lq, M, n_levels, P, 2, generator=gen, dtype=torch.float64)
    locs = ref[:, :, None, None, None, :] + offsets / wh[None, None, None, :, None, :]
    value = torch.randn(N, s, M, D, generator=gen, dtype=torch.float64)
    logits = torch.randn(N, lq, M, n_levels * P, generator=gen, dtype=torch.float64)
    weights = logits.softmax(-1).view(N, lq, M, n_levels, P)
    probe = torch.randn(N, lq, M * D, generator=gen, dtype=torch.float64)
    return value, locs, weights, probe


def smooth_mask(locs, shapes, margin=1e-3):
    """(N, Lq, M, L, P, 2) bool: True where both pixel coordinates are >= ``margin`` from an integer."""
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=locs.dtype)[None, None, None, :, None, :]
    pix = locs * wh - 0.5
    far = (pix - pix.round()).abs() >= margin
    return far.all(dim=-1, keepdim=True).expand_as(locs)


def run_with_grads(fn, shapes, value, locs, weights, probe):
    """Output and gradients of ``sum(out * probe)`` with respect to (value, locs, weights)."""
    inputs = [t.detach().clone().requires_grad_() for t in (value, locs, weights)]
    out = fn(inputs[0], shapes, inputs[1], inputs[2])
    grads = torch.autograd.grad((out * probe.to(out.dtype)).sum(), inputs)
    return [out.detach(), *grads]


def compare(case, dtype_name, impl, got, ref, mask):
    """Correctness rows of one implementation's (out, grads) against the float64 reference."""
    tol_out, tol_grad = TOLERANCES[dtype_name]
    rows = []
    names = ("out", "grad_value", "grad_loc", "grad_weights")
    for name, g, r, t in zip(names, got, ref, (tol_out, tol_grad, tol_grad, tol_grad)):
        diff = (g.double().cpu() - r).abs()
        scale = r.abs().max().item()
        if name == "grad_loc":
            rows.append({"case": case, "dtype": dtype_name, "impl": impl, "tensor": "grad_loc (all samples)",
                         "max_abs": diff.max().item(), "max_rel": diff.max().item() / scale, "tol": None,
                         "ok": None, "excluded": int((~mask).sum().item())})
            diff = diff[mask]
        err = diff.max().item()
        rows.append({"case": case, "dtype": dtype_name, "impl": impl, "tensor": name, "max_abs": err,
                     "max_rel": err / scale, "tol": t, "ok": err / scale <= t})
    return rows


def median_ms(fn, iters, warmup):
    """Median wall time of ``fn()`` in milliseconds, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mib(fn):
    """Peak memory allocated during one ``fn()`` beyond what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_impl(fn, shapes, value, locs, weights, probe, iters, warmup):
    """Timings and peak memory of forward and forward + backward of one implementation."""
    inputs = [t.detach().clone().requires_grad_() for t in (value, locs, weights)]
    probe = probe.to(value.dtype)

    def forward():
        with torch.no_grad():
            fn(inputs[0], shapes, inputs[1], inputs[2])

    def forward_backward():
        for t in inputs:
            t.grad = None
        fn(inputs[0], shapes, inputs[1], inputs[2]).backward(probe)

    row = {"fwd_ms": median_ms(forward, iters, warmup), "fwd_bwd_ms": median_ms(forward_backward, iters, warmup)}
    row["fwd_peak_mib"] = peak_mib(forward)
    for t in inputs:
        t.grad = None
    row["fwd_bwd_peak_mib"] = peak_mib(forward_backward)
    return row


def build_parser():
    p = argparse.ArgumentParser(prog="python -m joindet.benchmarks.gpu_deform_attn",
                                description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--out", default="gpu_deform_attn.json", help="JSON output path ('' for none)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement (default 5)")
    p.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated, of {sorted(DTYPES)}")
    p.add_argument("--cases", default="decoder,encoder", help="comma-separated, of decoder, encoder")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check needs a GPU (torch.cuda.is_available() is False)")
    from joindet.modeling import triton_deform_attn as tda
    from joindet.modeling.deformable_attention import ms_deform_attn_core

    device = torch.device(DEVICE)
    if not tda.triton_available(torch.empty(0, device=device)):
        sys.exit("triton is not importable: nothing to check")
    dtype_names = [d for d in args.dtypes.split(",") if d]
    cases = [c for c in args.cases.split(",") if c]
    for name in dtype_names:
        if name not in DTYPES:
            sys.exit(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
    impls = {"plain": ms_deform_attn_core, "triton": tda.ms_deform_attn_triton}
    shapes = level_shapes()
    print(f"device {torch.cuda.get_device_name(device)}; levels {shapes} (S={sum(h * w for h, w in shapes)}), "
          f"N={N} M={M} D={D} P={P}", flush=True)

    checks, timings = [], []
    for case in cases:
        value, locs, weights, probe = make_inputs(case, shapes)
        mask = smooth_mask(locs, shapes)
        for dtype_name in dtype_names:
            dtype = DTYPES[dtype_name]
            rounded = [t.to(dtype) for t in (value, locs, weights)]
            start = time.perf_counter()
            ref = run_with_grads(ms_deform_attn_core, shapes, *(t.double() for t in rounded), probe)
            print(f"[{case} {dtype_name}] float64 CPU reference: {time.perf_counter() - start:.1f} s", flush=True)
            on_gpu = [t.to(device) for t in rounded]
            probe_gpu = probe.to(device)
            for impl, fn in impls.items():
                got = run_with_grads(fn, shapes, *on_gpu, probe_gpu)
                checks += compare(case, dtype_name, impl, got, ref, mask)
                del got
            del ref
            per_impl = {}
            for impl, fn in impls.items():
                per_impl[impl] = time_impl(fn, shapes, *on_gpu, probe_gpu, args.iters, args.warmup)
                torch.cuda.empty_cache()
            for impl, row in per_impl.items():
                row.update(case=case, dtype=dtype_name, impl=impl,
                           speedup_fwd=per_impl["plain"]["fwd_ms"] / row["fwd_ms"],
                           speedup_fwd_bwd=per_impl["plain"]["fwd_bwd_ms"] / row["fwd_bwd_ms"])
                timings.append(row)
            print(markdown_table([r for r in timings if r["case"] == case and r["dtype"] == dtype_name],
                                 TIME_COLUMNS), flush=True)
            del on_gpu, probe_gpu
            torch.cuda.empty_cache()

    fmt_checks = [{**r, "max_abs": f"{r['max_abs']:.2e}", "max_rel": f"{r['max_rel']:.2e}",
                   "tol": None if r["tol"] is None else f"{r['tol']:.0e}"} for r in checks]
    print("\nCorrectness (reference: plain path, float64, CPU)\n")
    print(markdown_table(fmt_checks, CHECK_COLUMNS))
    print("\nTimings (median ms) and peak memory (MiB beyond the inputs)\n")
    print(markdown_table(timings, TIME_COLUMNS))
    # the plain path's rows are for scale (its low-precision backward accumulates in that precision)
    all_ok = all(r["ok"] for r in checks if r["ok"] is not None and r["impl"] == "triton")
    write_rows(args.out, {
        "device": torch.cuda.get_device_name(device),
        "config": {"image_size": IMAGE_SIZE, "strides": STRIDES, "level_shapes": shapes, "N": N, "M": M, "D": D,
                   "P": P, "decoder_queries": DECODER_QUERIES, "iters": args.iters, "warmup": args.warmup,
                   "torch": torch.__version__, "triton": getattr(tda.triton, "__version__", None)},
        "correctness": checks,
        "timings": timings,
        "all_ok": all_ok,
    })
    print(f"\n{'all correctness checks passed' if all_ok else 'SOME CORRECTNESS CHECKS FAILED'}"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
