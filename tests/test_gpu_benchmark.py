"""``python -m joindet.benchmarks.gpu`` without a GPU: the commands it would run (``--dry-run``), its exit
without CUDA, and its runner (budgets, failures, timeouts, the summary) on stand-in parts; and the CUDA
bookkeeping of the NCut benchmark (synchronisation, peak memory) with the CUDA calls faked on the CPU.
No timing assertion: the machine is shared."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT

from joindet.benchmarks import gpu


def _dry_run_lines(capsys, out_dir, *extra):
    assert gpu.main(["--dry-run", "--out-dir", str(out_dir), *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_dry_run_lists_the_commands_with_their_key_flags(capsys, tmp_path):
    out_dir = str(tmp_path / "res")
    lines = _dry_run_lines(capsys, out_dir)
    assert len(lines) == len(gpu.PARTS) == 5
    deform, ncut, bank, auto, plain = lines
    assert "-m joindet.benchmarks.gpu_deform_attn" in deform
    assert f"--out {os.path.join(out_dir, 'deform_attn.json')}" in deform
    assert "-m joindet.benchmarks.ncut " in ncut
    for flag in ("--device cuda", "--grids 32 64 84", "--num-images 8", "--dense-max 40",
                 f"--json {os.path.join(out_dir, 'ncut.json')}"):
        assert flag in ncut
    assert "-m joindet.benchmarks.bank" in bank and "--sizes coco imagenet" in bank
    assert f"--json {os.path.join(out_dir, 'bank.json')}" in bank
    for line, impl in ((auto, "auto"), (plain, "plain")):
        assert line.startswith(f"JOINDET_DEFORM_ATTN={impl} ")
        assert "-m joindet.benchmarks.train_step" in line
        for flag in ("--num-images 32", "--iters 6", "configs/mini/pretrain_synth.yaml",
                     f"--json {os.path.join(out_dir, f'train_step_{impl}.json')}"):
            assert flag in line
        assert line.endswith("MODEL.DEVICE cuda")
    # the two training-step runs keep their images and run folders apart, outside the out dir
    assert "gpu_bench/train_step_auto" in auto and "gpu_bench/train_step_plain" in plain
    assert not os.path.exists(out_dir)  # a dry run writes nothing


def test_dry_run_of_some_parts(capsys, tmp_path):
    lines = _dry_run_lines(capsys, tmp_path / "res", "--parts", "ncut", "deform_attn")
    assert len(lines) == 2 and "gpu_deform_attn" in lines[0] and "benchmarks.ncut" in lines[1]  # PARTS order


def test_bank_leaves_out_imagenet_when_short_of_time():
    (part,) = gpu.part_commands("o", "w", ["bank"], bank_time_s=gpu.BANK_IMAGENET_MIN_S - 1)
    assert part.argv[part.argv.index("--sizes") + 1:part.argv.index("--json")] == ["coco"]
    (part,) = gpu.part_commands("o", "w", ["bank"], bank_time_s=gpu.BANK_IMAGENET_MIN_S)
    assert part.argv[part.argv.index("--sizes") + 1:part.argv.index("--json")] == ["coco", "imagenet"]


def test_without_cuda_it_exits_with_code_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu, "cuda_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--out-dir", str(tmp_path / "res")])
    assert exc.value.code == 2
    assert gpu.NO_CUDA_MESSAGE in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_without_cuda_the_command_exits_with_code_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, whatever this machine has
    proc = subprocess.run([sys.executable, "-m", "joindet.benchmarks.gpu", "--out-dir", str(tmp_path / "res")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device: this script needs a GPU" in proc.stderr
    assert not (tmp_path / "res").exists()


def _python(code):
    return [sys.executable, "-c", code]


def test_runner_reports_each_part_and_writes_the_summary(monkeypatch, tmp_path, capsys):
    out = tmp_path / "res"
    pid_file = tmp_path / "child.pid"

    def fake_parts(out_dir, work_dir, names=gpu.PARTS, bank_time_s=None):
        j = lambda name: os.path.join(out_dir, f"{name}.json")  # noqa: E731
        write = "import json, sys; print('ok'); json.dump([1], open(sys.argv[1], 'w'))"
        return [
            gpu.Part("good", _python(write) + [j("good")], {"X_PART": "1"}, 100, j("good")),
            gpu.Part("crash", _python("import sys; print('boom', file=sys.stderr); sys.exit(3)"), {}, 100,
                     j("crash")),
            gpu.Part("no_json", _python("print('forgot')"), {}, 100, j("no_json")),
            # a part that hangs, with a child of its own: both go when its time is up
            gpu.Part("hang", ["sh", "-c", f"sleep 600 & echo $! > {pid_file}; wait"], {}, 100, j("hang")),
            gpu.Part("late", _python(write) + [j("late")], {}, 100, j("late")),
        ]

    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu, "part_commands", fake_parts)
    monkeypatch.setattr(gpu, "MIN_PART_S", 1.0)
    monkeypatch.setattr(gpu, "KILL_GRACE_S", 1.0)
    rc = gpu.main(["--out-dir", str(out), "--work-dir", str(tmp_path / "work"), "--budget-s", "5"])
    assert rc == 1  # not every part passed
    summary = json.loads((out / "summary.json").read_text())
    status = {r["part"]: r["status"] for r in summary["parts"]}
    assert status == {"good": "passed", "crash": "failed (exit 3)", "no_json": "failed (no JSON)",
                      "hang": "timed out", "late": "skipped (no time left)"}
    assert summary["all_passed"] is False and summary["budget_s"] == 5
    by_part = {r["part"]: r for r in summary["parts"]}
    assert by_part["good"]["json"] == str(out / "good.json") and by_part["crash"]["json"] is None
    assert by_part["good"]["command"].startswith("X_PART=1 ") and by_part["crash"]["exit_code"] == 3
    assert by_part["hang"]["exit_code"] is None and by_part["hang"]["timeout_s"] <= 5
    assert "ok" in (out / "good.log").read_text() and "boom" in (out / "crash.log").read_text()
    assert not (out / "late.log").exists()
    printed = capsys.readouterr().out
    assert "| good | passed |" in printed and "| hang | timed out |" in printed
    assert "boom" in printed  # the log tail of a failed part
    assert f"summary: {out / 'summary.json'}" in printed
    # the hung part's own child was killed with its process group: it ends (gone, or a zombie not yet reaped).
    # A signalled process on a loaded machine may take a moment to exit, so wait for it, up to a deadline.
    child = int(pid_file.read_text())
    assert _ends_within(child, 30.0), f"the hung part's child {child} is still running"


def _ends_within(pid, deadline_s):
    """True once process ``pid`` is gone or a zombie, polling until ``deadline_s`` seconds have passed."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.split()[1] == "Z" for line in f if line.startswith("State:")):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def test_ncut_benchmark_cuda_bookkeeping_with_faked_cuda_calls(monkeypatch, one_torch_thread):
    """The ``--device cuda`` branch of the NCut benchmark (synchronise around every clock reading, peak
    memory reset per measurement) on the CPU, with the CUDA calls replaced by counters."""
    import torch

    from joindet.benchmarks import ncut as bench

    calls = {"sync": 0, "reset": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.__setitem__("sync", calls["sync"] + 1))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: calls.__setitem__("reset", calls["reset"] + 1))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 ** 20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2 ** 20)

    class FakeCudaMeter(bench._Meter):
        def __init__(self, device):
            super().__init__(device)
            self.cuda = True  # the device stays the CPU

    monkeypatch.setattr(bench, "_Meter", FakeCudaMeter)
    (row,) = bench.run(num_images=1, grids=(4,))
    assert set(bench.COLUMNS + bench.CUDA_COLUMNS) <= set(row)
    assert all(row[k] == 2.0 for k in bench.CUDA_COLUMNS)  # (3 - 1) MiB beyond what was allocated before
    # one reset per measurement: selective search, encoder, lanczos, dense, batched
    assert calls["reset"] == 5 and calls["sync"] > 2 * 5
