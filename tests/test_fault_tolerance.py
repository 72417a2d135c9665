"""Crash and resume: a tiny pretraining killed with SIGKILL mid-iteration, during a prior
refresh and during a bank write, then stopped by SIGTERM, resumed each time with ``--resume``, ends with
the same weights and the same prior bank as an uninterrupted run of the same seed; no partially written
version is ever read. And a write that fails with ENOSPC names the path and leaves the previous file or
bank version intact."""

import errno
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from joindet.priors.bank import PriorBank
from joindet.utils.atomic import AtomicWriteError, atomic_write, write_json_atomic

from conftest import REPO_ROOT, TEST_SEED, TINY_DATA_OPTS, TINY_MODEL_OPTS

from test_pretraining import PRETRAIN_CONFIG, TINY_PRETRAIN_OPTS

RUNNER = REPO_ROOT / "tests" / "helpers" / "fault_runner.py"
HOOKS = "PriorRefreshHook"

# 8 iterations; refreshes make version 1 after iteration 3 (1-based) and version 2 after iteration 6;
# checkpoints after iterations 2, 4, 6 and 8 (model_0000001/3/5.pth, model_final.pth).
RUN_OPTS = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "JOINDET.UPDATE_PERIOD_ITERS", "3",
            "SEED", str(TEST_SEED)]


def _argv(output_dir, resume=False):
    return ["--config-file", str(PRETRAIN_CONFIG), *(["--resume"] if resume else []), *TINY_DATA_OPTS,
            *TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, *RUN_OPTS, "OUTPUT_DIR", str(output_dir)]


def _start(output_dir, env, fault=None, marker=None, resume=False):
    env = dict(env)
    if fault:
        env.update(JOINDET_TEST_FAULT=fault, JOINDET_TEST_MARKER=str(marker))
    log = open(Path(output_dir).with_suffix(f".{fault or 'run'}.log".replace(":", "_")), "w")
    return subprocess.Popen([sys.executable, str(RUNNER), *_argv(output_dir, resume)], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT), log


def _finish(proc, log, timeout=240):
    try:
        proc.wait(timeout=timeout)
    finally:
        log.close()
    return Path(log.name).read_text()


def _run_until(output_dir, env, fault, tmp_path, resume, then):
    """Start a run with ``fault``, wait until it reaches it, then ``then(proc)``; returns (status, log)."""
    marker = tmp_path / f"marker_{fault.replace(':', '_')}"
    proc, log = _start(output_dir, env, fault, marker, resume)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            text = _finish(proc, log)
            pytest.fail(f"the run ended (status {proc.returncode}) before reaching {fault}:\n{text[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach {fault} in 240 s:\n{_finish(proc, log)[-4000:]}")
        time.sleep(0.05)
    then(proc, marker)
    text = _finish(proc, log)
    return proc.returncode, text


def _sigkill(proc, marker):
    proc.send_signal(signal.SIGKILL)


def _sigterm(proc, marker):
    proc.send_signal(signal.SIGTERM)
    Path(f"{marker}.sent").write_text("")


def _last_checkpoint(output_dir):
    return (Path(output_dir) / "last_checkpoint").read_text().strip()


def _hook_version(path):
    return torch.load(path, map_location="cpu", weights_only=True)["trainer"]["hooks"][HOOKS]["version"]


def _bank_arrays(output_dir):
    bank = PriorBank(Path(output_dir) / "prior_bank")
    out = {}
    for v in bank.versions():
        version = bank.read(v)
        out[v] = {name: np.asarray(getattr(version, name)).copy()
                  for name in ("image_ids", "offsets", "boxes", "scores")}
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_cache):
    """The reference: the same run, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    env = {**os.environ, "JOINDET_CACHE": str(synthetic_cache), "OMP_NUM_THREADS": "1"}
    proc, log = _start(out, env)
    text = _finish(proc, log)
    assert proc.returncode == 0, text[-4000:]
    return out


def test_killed_and_preempted_run_resumes_to_the_uninterrupted_result(uninterrupted, subprocess_env, tmp_path):
    out = tmp_path / "run"

    # (a) SIGKILL inside iteration 5 (0-based 4): the last checkpoint is that of iteration 4, version 1
    status, text = _run_until(out, subprocess_env, "step:4", tmp_path, resume=False, then=_sigkill)
    assert status == -signal.SIGKILL, text[-3000:]
    assert _last_checkpoint(out) == "model_0000003.pth"
    assert _hook_version(out / "model_0000003.pth") == 1
    assert PriorBank(out / "prior_bank").versions() == [0, 1]

    # (b) resumed, then SIGKILL during the refresh that makes version 2: nothing of it was written
    status, text = _run_until(out, subprocess_env, "refresh:6", tmp_path, resume=True, then=_sigkill)
    assert status == -signal.SIGKILL, text[-3000:]
    assert "Resumed with prior bank version 1" in text
    assert PriorBank(out / "prior_bank").versions() == [0, 1]
    assert _last_checkpoint(out) == "model_0000003.pth"

    # (c) resumed, then SIGKILL during the write of version 2: its files are complete in a temporary
    # folder, which no reader takes for a version
    status, text = _run_until(out, subprocess_env, "bank_write:2", tmp_path, resume=True, then=_sigkill)
    assert status == -signal.SIGKILL, text[-3000:]
    leftovers = [p.name for p in (out / "prior_bank").iterdir() if p.name.startswith(".tmp-v0002")]
    assert leftovers, "the write was interrupted before its temporary folder existed"
    assert PriorBank(out / "prior_bank").versions() == [0, 1]

    # SIGTERM inside iteration 7 (0-based 6): a checkpoint of iteration 7 with version 2, exit status 0
    status, text = _run_until(out, subprocess_env, "sigterm:6", tmp_path, resume=True, then=_sigterm)
    assert status == 0, text[-3000:]
    assert "Training stopped on SIGTERM after iteration 6" in text
    assert _last_checkpoint(out) == "model_0000006.pth"
    assert _hook_version(out / "model_0000006.pth") == 2
    assert not (out / "model_final.pth").exists()
    assert not [p for p in (out / "prior_bank").iterdir() if p.name.startswith((".tmp-", ".old-"))]

    # resumed to the end
    proc, log = _start(out, subprocess_env, resume=True)
    text = _finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "Resumed with prior bank version 2" in text

    want = torch.load(uninterrupted / "model_final.pth", map_location="cpu", weights_only=True)
    got = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert got["iteration"] == want["iteration"] == 7
    assert sorted(got["model"]) == sorted(want["model"])
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"{name} differs from the uninterrupted run"
    want_bank, got_bank = _bank_arrays(uninterrupted), _bank_arrays(out)
    assert sorted(got_bank) == sorted(want_bank) == [0, 1, 2]
    for v, arrays in want_bank.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(got_bank[v][name], array, err_msg=f"version {v} {name}")


# --------------------------------------------------------------------------- full disk
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_a_file_write_names_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "eval_results.json"
    write_json_atomic(path, {"AP": 1.0})
    with pytest.raises(AtomicWriteError) as info:
        with atomic_write(path, "w") as f:
            f.write('{"AP": ')
            _no_space()
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value) and "No space left on device" in str(info.value)
    assert path.read_text() == '{"AP": 1.0}'
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_full_disk_during_a_bank_write_keeps_the_previous_version(tmp_path, monkeypatch):
    bank = PriorBank(tmp_path / "bank")
    boxes = [np.array([[0, 0, 10, 10]], np.float32), np.array([[1, 1, 5, 6]], np.float32)]
    scores = [np.array([0.5], np.float32), np.array([0.7], np.float32)]
    bank.write_version(0, [1, 2], boxes, scores)
    real_save = np.save
    calls = []

    def save_then_full(f, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third array of the version: the disk fills up
            _no_space()
        return real_save(f, array, **kwargs)

    monkeypatch.setattr(np, "save", save_then_full)
    with pytest.raises(OSError) as info:
        bank.write_version(1, [1, 2], boxes, scores)
    assert info.value.errno == errno.ENOSPC
    assert str(bank.root / "v0001") in str(info.value)
    for replace in (False, True):  # a new version, or one that replaces version 0
        calls.clear()
        with pytest.raises(OSError):
            bank.write_version(0 if replace else 1, [1, 2], boxes, scores, overwrite=replace)
    monkeypatch.undo()
    assert bank.versions() == [0]
    v0 = bank.read(0)
    np.testing.assert_array_equal(v0.get(2)[0], boxes[1])
    np.testing.assert_array_equal(v0.get(1)[1], scores[0])
    assert not [p for p in bank.root.iterdir() if p.name.startswith(".")]  # nothing half-written left


def test_full_disk_during_a_checkpoint_save_names_the_path_and_keeps_the_last_checkpoint(make_cfg, monkeypatch):
    from detectron2.modeling import build_model

    from joindet.engine.trainer import build_checkpointer

    cfg = make_cfg()
    model = build_model(cfg)
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.save("model_0000001", iteration=1)
    out = Path(cfg.OUTPUT_DIR)
    before = (out / "model_0000001.pth").read_bytes()

    real_save = torch.save

    def save_half_then_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        _no_space()

    monkeypatch.setattr(torch, "save", save_half_then_full)
    for name in ("model_0000001", "model_0000002"):  # replacing one, or a new one
        with pytest.raises(OSError) as info:
            checkpointer.save(name, iteration=2)
        assert info.value.errno == errno.ENOSPC
        assert str(out / f"{name}.pth") in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert (out / "model_0000001.pth").read_bytes() == before
    assert not (out / "model_0000002.pth").exists()
    assert _last_checkpoint(out) == "model_0000001.pth"
    assert checkpointer.get_checkpoint_file() == str(out / "model_0000001.pth")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- soak script (smoke)
def test_soak_benchmark_smoke(synthetic_cache, tmp_path, one_torch_thread):
    from joindet.benchmarks import soak

    opts = [*TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    rows = soak.main(["--iters", "7", "--period", "2", "--num-images", "6", "--output-dir", str(tmp_path / "soak"),
                      "--json", str(tmp_path / "soak.json"), *opts])
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert all(r["rss_mib"] > 0 for r in rows)
    if platform.libc_ver()[0] == "glibc":  # malloc_trim exists: the trimmed figure is measured too
        assert all(0 < r["rss_trimmed_mib"] <= r["rss_mib"] + 1 for r in rows)
    assert rows[0]["growth_since_2nd_pct"] is None and rows[1]["growth_since_2nd_pct"] == 0.0
    assert (tmp_path / "soak" / "synthetic").is_dir()  # its own synthetic set, not the shared cache
