"""Multi-process equivalence: a prior refresh on 2 gloo processes gives the bank that one
process gives for the same weights; every rank sees the same low-data split and its own, disjoint shard
of the refresh; a rank that fails ends the whole job with its error instead of leaving the others hanging."""
import json
import subprocess
import sys

import numpy as np
import pytest

from joindet.priors.bank import PriorBank

from conftest import REPO_ROOT, free_port

WORKER = REPO_ROOT / "tests" / "helpers" / "mp_refresh.py"


def _refresh(out, env, processes, fail_rank=-1, timeout=300):
    return subprocess.run([sys.executable, str(WORKER), str(out), "--num-gpus", str(processes),
                           "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--fail-rank", str(fail_rank)],
                          cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory, synthetic_cache):
    import os

    env = {**os.environ, "JOINDET_CACHE": str(synthetic_cache), "OMP_NUM_THREADS": "1"}
    runs = {}
    for processes in (1, 2):
        out = tmp_path_factory.mktemp(f"refresh_{processes}")
        run = _refresh(out, env, processes)
        assert run.returncode == 0, run.stdout[-4000:]
        runs[processes] = out
    return runs


def test_a_refresh_on_two_processes_gives_the_one_process_bank(refreshed):
    one, two = (PriorBank(refreshed[n] / "prior_bank") for n in (1, 2))
    assert one.versions() == two.versions() == [0, 1]
    for v in (0, 1):
        a, b = one.read(v), two.read(v)
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)  # the same number of priors per image
        # the same boxes; the encoder runs on other batches of images on 2 processes, so its float
        # rounding may differ in the last bits
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)
    assert two.read(1).meta["info"]["source"] == "ncut_encoder"
    assert len(one.read(1).image_ids) == 8


def test_ranks_share_the_low_data_split_and_split_the_refresh(refreshed):
    ranks = json.loads((refreshed[2] / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["low_data_split"] == ranks[1]["low_data_split"] and len(ranks[0]["low_data_split"]) == 1
    shards = [set(r["shard"]) for r in ranks]
    assert not shards[0] & shards[1]
    assert sorted(shards[0] | shards[1]) == sorted(PriorBank(refreshed[2] / "prior_bank").read(1).image_ids.tolist())
    single = json.loads((refreshed[1] / "ranks.json").read_text())
    assert single[0]["low_data_split"] == ranks[0]["low_data_split"]


def test_no_rank_gathers_the_priors(refreshed):
    """Each rank writes its shard of a version and the main process commits it; what the ranks
    all_gather during version 0 and the refresh is a few bytes (a staging path, a count), never priors."""
    for processes in (1, 2):
        for rank in json.loads((refreshed[processes] / "ranks.json").read_text()):
            payloads = rank["gathers"]
            assert not [p for p in payloads if p["type"] == "dict"], payloads
            assert all(p["bytes"] < 1024 for p in payloads), payloads
    bank = refreshed[2] / "prior_bank"
    assert not [p.name for p in bank.iterdir() if p.name.startswith(".")]  # staging folders removed


def test_closing_the_process_group_ends_its_gloo_threads(refreshed):
    """After ``_close_process_group`` (what ``train_net.py`` runs when ``main`` returns) no gloo worker,
    gloo transport or TCP-store thread is left: one left alive into interpreter finalization can abort
    the rank (SIGABRT) when it frees the last collective's work. Detectron2 keeps references to the
    groups that ``destroy_process_group`` alone leaves alive."""
    for processes in (1, 2):
        for rank in range(processes):
            threads = json.loads((refreshed[processes] / f"threads_after_close_{rank}.json").read_text())
            assert "python" in threads  # the main thread is listed under its name
            assert not [t for t in threads if "gloo" in t or "tcpstore" in t], threads


def test_a_failing_rank_ends_the_job_with_its_error(subprocess_env, tmp_path):
    run = _refresh(tmp_path / "fail", subprocess_env, 2, fail_rank=1, timeout=240)
    assert run.returncode != 0
    assert "injected failure in the refresh generator of rank 1" in run.stdout
    assert PriorBank(tmp_path / "fail" / "prior_bank").versions() == [0]  # no version 1 was published
