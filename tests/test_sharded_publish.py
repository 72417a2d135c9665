"""A multi-process version is written as one shard per rank into a staging folder and
committed by the main process (``generation.publish_version``), not gathered to every rank; the staging
folder of a killed run is removed by ``PriorBank.recover``. The 2-process path end to end (and that no
rank all_gathers priors) is in test_multiprocess.py."""
import multiprocessing as mp
import os
import signal

import numpy as np

from joindet.priors.bank import PriorBank
from joindet.priors.generation import commit_shards, priors_to_arrays, write_shard


def _priors(ids, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for i in ids:
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 50, (k, 2)).astype(np.float32)
        out[i] = (np.concatenate([xy, xy + rng.uniform(1, 20, (k, 2)).astype(np.float32)], 1),
                  rng.uniform(0, 1, k).astype(np.float32))
    return out


def test_committed_shards_give_the_bank_of_one_write(tmp_path):
    priors = _priors(range(1, 40), seed=0)
    priors[7] = (np.array([[5, 5, 5, 9]], np.float32), np.array([0.5], np.float32))  # no area: dropped
    ref = PriorBank(tmp_path / "ref")
    ids = sorted(priors)
    ref.write_version(1, ids, [priors[i][0] for i in ids], [priors[i][1] for i in ids], info={"a": 1})

    bank = PriorBank(tmp_path / "bank")
    staging = bank.make_staging_dir(1)
    for rank in range(3):  # the shards of shard(): every third image
        write_shard(staging, rank, priors_to_arrays({i: priors[i] for i in ids[rank::3]}))
    commit_shards(bank, 1, staging, 3, info={"a": 1})
    a, b = ref.read(1), bank.read(1)
    for name in ("image_ids", "offsets", "boxes", "scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta["filtered_priors"] == b.meta["filtered_priors"] and b.meta["info"] == {"a": 1}


def _killed_writer(root):
    bank = PriorBank(root)
    staging = bank.make_staging_dir(2)
    write_shard(staging, 0, priors_to_arrays(_priors(range(10), seed=1)))
    os.kill(os.getpid(), signal.SIGKILL)


def test_recover_removes_the_staging_folder_of_a_killed_run(tmp_path):
    bank = PriorBank(tmp_path)
    bank.write_version(1, [1], [np.array([[0, 0, 4, 4]], np.float32)], [np.array([1.0], np.float32)])
    proc = mp.get_context("fork").Process(target=_killed_writer, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    staged = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-v0002-")]
    assert len(staged) == 1 and "-shards-" in staged[0]
    assert any(p.name.startswith("rank0.") for p in (tmp_path / staged[0]).iterdir())
    assert bank.versions() == [1]  # never taken for a version
    done = bank.recover()
    assert done == [f"removed {staged[0]} (an interrupted write)"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert bank.versions() == [1]
