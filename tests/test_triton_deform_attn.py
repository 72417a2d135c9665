"""Tests of the fused Triton deformable attention (joindet/modeling/triton_deform_attn.py), of the
dispatcher in deformable_attention.py and of the GPU check script's CPU behaviour.

The kernels are checked in Triton's interpreter on CPU tensors. ``TRITON_INTERPRET=1`` only takes
effect if set before triton is imported, and this suite imports triton long before (the project's
imports pull it in), so the comparisons run in a subprocess, tests/helpers/triton_deform_attn_check.py,
which prints its measurements as JSON; the tolerances are asserted here.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from joindet.modeling.deformable_attention import DEFORM_ATTN_ENV, ms_deform_attn, ms_deform_attn_core

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = REPO_ROOT / "tests" / "helpers" / "triton_deform_attn_check.py"
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")

# max |triton - reference| / max |reference|, reference = plain path in float64 on the same inputs
TOLERANCES = {
    "random_fp32": (1e-5, 1e-4),
    "wide_d_fp32": (1e-5, 1e-4),
    "centres_edges_fp32": (1e-5, 1e-4),
    "random_fp16": (2e-3, 5e-3),  # outputs and gradients rounded to float16
    "random_bf16": (1e-2, 3e-2),  # ... to bfloat16
}


def _subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", DEFORM_ATTN_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def report():
    """The helper's JSON report (one interpreter run shared by the tests of this file)."""
    if not HAS_TRITON:
        pytest.skip("triton is not importable")
    proc = subprocess.run([sys.executable, str(HELPER)], env=_subprocess_env(TRITON_INTERPRET="1"),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"helper failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_helper_ran_in_the_interpreter(report):
    assert report["interpreted"]


@needs_triton
@pytest.mark.parametrize("case", sorted(TOLERANCES))
def test_forward_and_gradients_match_plain_path(report, case):
    tol_out, tol_grad = TOLERANCES[case]
    result = report["cases"][case]
    assert result["out"]["max_rel"] <= tol_out, result["out"]
    for name in ("grad_value", "grad_loc", "grad_weights"):
        assert result[name]["max_rel"] <= tol_grad, (name, result[name])
        assert result[name]["ref_absmax"] > 0  # the functional really reaches every input
    dtype = "torch." + {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[case.rsplit("_", 1)[1]]
    assert result["dtypes"] == [dtype] * 4  # output and gradients keep the inputs' dtype


@needs_triton
def test_sample_at_pixel_centre_reads_that_pixel(report):
    assert report["centre_sample_abs_err"] <= 1e-6


@needs_triton
def test_dispatcher_under_interpreter(report):
    assert report["dispatch"] == {
        "triton_available_cpu": True,
        "auto_cpu_is_plain": True,
        "forced_triton_matches": True,
        "float64_forced_triton_raises": True,
    }


@needs_triton
def test_module_with_triton_matches_plain(report):
    assert report["module"]["out"]["max_rel"] <= 1e-5
    assert report["module"]["params_max_rel"] <= 1e-4


def _small_inputs():
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3), (1, 4)]
    value = torch.randn(1, 10, 2, 3, generator=gen)
    locs = torch.rand(1, 4, 2, 2, 2, 2, generator=gen) * 1.4 - 0.2
    weights = torch.rand(1, 4, 2, 2, 2, generator=gen)
    return shapes, value, locs, weights


def test_dispatcher_keeps_cpu_on_plain_path(monkeypatch):
    shapes, value, locs, weights = _small_inputs()
    expected = ms_deform_attn_core(value, shapes, locs, weights)
    for setting in (None, "auto", "plain", " AUTO "):
        if setting is None:
            monkeypatch.delenv(DEFORM_ATTN_ENV, raising=False)
        else:
            monkeypatch.setenv(DEFORM_ATTN_ENV, setting)
        assert torch.equal(ms_deform_attn(value, shapes, locs, weights), expected)
    assert torch.equal(ms_deform_attn(value.double(), shapes, locs.double(), weights.double(), impl="auto"),
                       ms_deform_attn_core(value.double(), shapes, locs.double(), weights.double()))


def test_dispatcher_rejects_unknown_impl(monkeypatch):
    shapes, value, locs, weights = _small_inputs()
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(value, shapes, locs, weights, impl="cuda")
    monkeypatch.setenv(DEFORM_ATTN_ENV, "fast")
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(value, shapes, locs, weights)


@needs_triton
def test_forced_triton_on_cpu_without_interpreter_raises():
    from joindet.modeling import triton_deform_attn as tda

    if tda._kernels_interpreted():
        pytest.skip("this process runs the kernels in Triton's interpreter")
    shapes, value, locs, weights = _small_inputs()
    assert not tda.triton_available(value)
    with pytest.raises(RuntimeError, match="cannot run"):
        ms_deform_attn(value, shapes, locs, weights, impl="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run in full")
def test_gpu_check_script_exits_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "joindet.benchmarks.gpu_deform_attn", "--out", str(out)],
                          env=_subprocess_env(CUDA_VISIBLE_DEVICES=""), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stderr
    assert not out.exists()
