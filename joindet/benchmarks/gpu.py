"""
The GPU benchmarks in one command, for a machine lent with a CUDA device for a few minutes::

    python -m joindet.benchmarks.gpu --out-dir gpu_results [--budget-s 470] [--parts deform_attn ncut ...] \\
        [--work-dir output/gpu_bench] [--dry-run]

Why: the CPU figures come from the individual benchmarks on the development machine; a GPU may be lent
only briefly (about 8 minutes of one H200), so what needs it is prepared to run unattended in one go.
Each part runs in its own subprocess (``python -m joindet.benchmarks.<name>``, its own process group),
so that a failure, an out-of-memory or a hang of one does not stop the others; its stdout and stderr go
to ``<out-dir>/<part>.log`` and its rows to ``<out-dir>/<part>.json``. The parts, in this order, with
their time budgets:

* ``deform_attn`` (180 s): :mod:`joindet.benchmarks.gpu_deform_attn`, the fused Triton deformable
  attention against the plain path at Deformable DETR's sizes (correctness against the CPU float64
  reference, timings and peak memory); it exits 1 when a Triton check fails;
* ``ncut`` (120 s): :mod:`joindet.benchmarks.ncut` with ``--device cuda`` at 32 x 32, 64 x 64 and
  84 x 84 patches (84 ~ the stride-16 level of a 1333 x 1333 image), 8 images, the dense reference up
  to 40: NCut and the encoder on the GPU, selective search on the CPU as DETReg runs it, peak GPU memory
  per measurement;
* ``bank`` (120 s): :mod:`joindet.benchmarks.bank`, the Box Smooth Module and the bank write / read
  (numpy on the CPU) at COCO and ImageNet size; the ImageNet size (about 40 s on 2 cores, against 5 s
  for COCO) is left out when fewer than ``BANK_IMAGENET_MIN_S`` seconds are left for the part;
* ``train_step_auto`` and ``train_step_plain`` (120 s each): :mod:`joindet.benchmarks.train_step`, one
  training step of the mini JoinDet pretraining (``configs/mini/pretrain_synth.yaml``) stage by stage
  with ``MODEL.DEVICE cuda``, 32 synthetic images, 6 measured steps; the deformable attention as
  ``JOINDET_DEFORM_ATTN=auto`` (the Triton kernels on CUDA) and ``plain`` (the ``grid_sample`` path),
  two processes, so that the two tables give the kernels' share of a real step. Their synthetic images
  and run folders go under ``--work-dir``, not the out dir.

The whole run is held to ``--budget-s`` seconds (default 470, under 8 minutes) by subprocess timeouts:
each part gets the smaller of its budget and what is left, a part that runs out is killed (its whole
process group) and reported as ``timed out``, and a part with fewer than ``MIN_PART_S`` seconds left
is ``skipped``. At the end a Markdown summary (part, status, seconds, JSON, log) is printed, the last
lines of the log of each part that did not pass, and everything is written to ``<out-dir>/summary.json``
(per part: status, exit code, seconds, budget, command, environment, log and JSON paths). Exits 0 when
every part passed, 1 otherwise, and 2 at once without a CUDA device (the CPU figures come from the
individual benchmarks). ``--dry-run`` prints the commands, one per line, and runs nothing (no GPU
needed). The out dir holds 11 files for the 5 parts; where only a few files come back from the machine,
pack it (``tar czf gpu_results.tgz gpu_results``).
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional, Sequence

from joindet.benchmarks import MINI_PRETRAIN_CONFIG, markdown_table

__all__ = ["PARTS", "Part", "build_parser", "cuda_available", "part_commands", "run_parts", "main"]

NO_CUDA_MESSAGE = "no CUDA device: this script needs a GPU; the CPU figures come from the individual benchmarks"
DEFAULT_BUDGET_S = 470
MIN_PART_S = 20  # a part with less time left than this is skipped
BANK_IMAGENET_MIN_S = 90  # the bank part runs the ImageNet size only with this much time for it
KILL_GRACE_S = 5  # after SIGTERM of a timed-out part's process group, before SIGKILL
LOG_TAIL_LINES = 20
PARTS = ("deform_attn", "ncut", "bank", "train_step_auto", "train_step_plain")
BUDGETS_S = {"deform_attn": 180, "ncut": 120, "bank": 120, "train_step_auto": 120, "train_step_plain": 120}


class Part(NamedTuple):
    """One benchmark subprocess: its ``argv``, the environment it adds, its time budget in seconds and the
    JSON file it writes (None: none expected)."""
    name: str
    argv: List[str]
    env: dict
    budget_s: float
    json_path: Optional[str]


def cuda_available():
    """Whether torch sees a CUDA device (a function, so that tests can replace it)."""
    import torch

    return torch.cuda.is_available()


def _module(name):
    return [sys.executable, "-m", f"joindet.benchmarks.{name}"]


def part_commands(out_dir, work_dir, names=PARTS, bank_time_s=None):
    """The :class:`Part` of each of ``names``, in ``PARTS`` order. ``bank_time_s``: the seconds the bank
    part will have (None: its whole budget); below ``BANK_IMAGENET_MIN_S`` it runs the COCO size alone."""
    j = lambda name: os.path.join(out_dir, f"{name}.json")  # noqa: E731
    parts = []
    for name in (n for n in PARTS if n in names):
        env = {}
        if name == "deform_attn":
            argv = _module("gpu_deform_attn") + ["--out", j(name)]
        elif name == "ncut":
            argv = _module("ncut") + ["--device", "cuda", "--grids", "32", "64", "84", "--num-images", "8",
                                      "--dense-max", "40", "--json", j(name)]
        elif name == "bank":
            time_s = BUDGETS_S[name] if bank_time_s is None else bank_time_s
            sizes = ["coco", "imagenet"] if time_s >= BANK_IMAGENET_MIN_S else ["coco"]
            argv = _module("bank") + ["--sizes", *sizes, "--json", j(name)]
        else:  # train_step_<impl>
            impl = name.rsplit("_", 1)[1]
            env = {"JOINDET_DEFORM_ATTN": impl}
            argv = _module("train_step") + ["--config-file", MINI_PRETRAIN_CONFIG, "--num-images", "32",
                                            "--iters", "6", "--output-dir", os.path.join(work_dir, name),
                                            "--json", j(name), "MODEL.DEVICE", "cuda"]
        parts.append(Part(name, argv, env, BUDGETS_S[name], j(name)))
    return parts


def command_line(part):
    """The shell line of a part (its environment first)."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in part.env.items()] + [shlex.join(part.argv)])


def _run_one(part, log_path, timeout_s):
    """Run ``part`` with its output into ``log_path``, killed with its process group after ``timeout_s``.
    Returns (exit code or None when it timed out, seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {command_line(part)}\n# timeout {timeout_s:.0f} s\n")
        log.flush()
        proc = subprocess.Popen(part.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
            _kill_group(proc)
        except BaseException:  # e.g. KeyboardInterrupt: take the part down with us
            _kill_group(proc)
            raise
    return rc, time.monotonic() - start


def _kill_group(proc):
    """SIGTERM the process group of ``proc`` (its own session), then SIGKILL what is left of it (the
    leader's children too) after ``KILL_GRACE_S``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone
        pass
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def _tail(path, n=LOG_TAIL_LINES):
    try:
        with open(path, errors="replace") as f:
            return f.readlines()[-n:]
    except OSError:
        return []


def run_parts(parts, out_dir, budget_s, start=None, make_part=None):
    """Run ``parts`` one after the other within ``budget_s`` seconds from ``start`` (default now); each
    gets min(its budget, what is left), none is started with less than ``MIN_PART_S`` left. ``make_part``:
    optional ``(part, seconds it will have) -> part`` to rebuild a part for its time (the bank's sizes).
    Returns one result dict per part."""
    start = time.monotonic() if start is None else start
    results = []
    for part in parts:
        left = budget_s - (time.monotonic() - start)
        timeout_s = min(part.budget_s, left)
        if make_part is not None:
            part = make_part(part, timeout_s)
        log_path = os.path.join(out_dir, f"{part.name}.log")
        result = {"part": part.name, "command": command_line(part), "argv": part.argv, "env": part.env,
                  "budget_s": part.budget_s, "timeout_s": round(max(timeout_s, 0.0), 1), "log": log_path,
                  "json": None, "exit_code": None, "seconds": 0.0}
        if timeout_s < MIN_PART_S:
            result["status"] = "skipped (no time left)"
            print(f"[gpu] {part.name}: skipped, {max(left, 0.0):.0f} s left", flush=True)
            results.append(result)
            continue
        if part.json_path is not None and os.path.isfile(part.json_path):
            os.remove(part.json_path)  # a previous run's: only what this run writes counts
        print(f"[gpu] {part.name}: running (timeout {timeout_s:.0f} s): {result['command']}", flush=True)
        rc, seconds = _run_one(part, log_path, timeout_s)
        has_json = part.json_path is not None and os.path.isfile(part.json_path)
        result.update(exit_code=rc, seconds=round(seconds, 1), json=part.json_path if has_json else None)
        if rc is None:
            result["status"] = "timed out"
        elif rc != 0:
            result["status"] = f"failed (exit {rc})"
        elif part.json_path is not None and not has_json:
            result["status"] = "failed (no JSON)"
        else:
            result["status"] = "passed"
        print(f"[gpu] {part.name}: {result['status']} in {seconds:.0f} s", flush=True)
        results.append(result)
    return results


def _device_name():
    """The GPU's name from nvidia-smi (None when it cannot say); the parent does not initialise CUDA."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_parser():
    p = argparse.ArgumentParser(prog="python -m joindet.benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="gpu_results", help="logs, JSON and summary.json (default gpu_results)")
    p.add_argument("--work-dir", default=os.path.join("output", "gpu_bench"),
                   help="the training-step runs' synthetic images and run folders (default output/gpu_bench)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"total seconds for all the parts (default {DEFAULT_BUDGET_S})")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="the parts to run (default all)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and run nothing")
    return p


def main(argv: Optional[Sequence[str]] = None):
    start = time.monotonic()
    args = build_parser().parse_args(argv)
    if not args.budget_s > 0:
        build_parser().error(f"--budget-s must be > 0, got {args.budget_s}")
    out_dir, work_dir = os.path.abspath(args.out_dir), os.path.abspath(args.work_dir)
    parts = part_commands(out_dir, work_dir, args.parts)
    if args.dry_run:
        for part in parts:
            print(command_line(part))
        return 0
    if not cuda_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        raise SystemExit(2)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)

    def make_part(part, time_s):  # the bank's sizes follow the time it will have
        return part_commands(out_dir, work_dir, [part.name], bank_time_s=time_s)[0] if part.name == "bank" else part

    results = run_parts(parts, out_dir, args.budget_s, start=start, make_part=make_part)
    total_s = time.monotonic() - start
    summary = {"device": _device_name(), "budget_s": args.budget_s, "total_s": round(total_s, 1),
               "all_passed": all(r["status"] == "passed" for r in results), "parts": results}
    summary_path = os.path.join(out_dir, "summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nGPU benchmarks on {summary['device'] or 'a CUDA device'}: {total_s:.0f} s of a {args.budget_s:.0f} s "
          f"budget\n")
    print(markdown_table([{**r, "json": r["json"] or "-"} for r in results],
                         ["part", "status", "seconds", "timeout_s", "json", "log"]))
    for r in results:
        if r["status"] != "passed" and not r["status"].startswith("skipped"):
            print(f"\n--- last lines of {r['log']} ({r['part']}: {r['status']}) ---")
            print("".join(_tail(r["log"])), end="")
    print(f"\nsummary: {summary_path}")
    return 0 if summary["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
