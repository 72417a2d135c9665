"""One prior refresh with fixed weights, on as many (gloo) processes as asked, for the multi-process
equivalence test (test code, not shipped)::

    python tests/helpers/mp_refresh.py --num-gpus N --dist-url tcp://127.0.0.1:PORT OUT_DIR [--fail-rank R]

Every process builds the tiny pretraining trainer with the same seed (so the same initial weights),
makes version 0 and then version 1 of the bank in OUT_DIR/prior_bank with the hook's own code. The main
process writes OUT_DIR/ranks.json: per rank, the image ids of its refresh shard and of the low-data
split ``synth_train_10pct``, and the type and pickled size of every ``comm.all_gather`` payload of
version 0 and the refresh. With ``--fail-rank R``, rank R raises in its refresh generator (the other
ranks then wait in the gather).
"""
import argparse
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def _record_all_gathers(comm):
    """Replace ``comm.all_gather`` by a recorder of each payload's type and pickled size."""
    import pickle
    from types import SimpleNamespace

    record = SimpleNamespace(original=comm.all_gather, payloads=[])

    def recording_all_gather(data, group=None):
        record.payloads.append({"type": type(data).__name__, "bytes": len(pickle.dumps(data))})
        return record.original(data, group=group)

    comm.all_gather = recording_all_gather
    return record


def _refresh(out_dir, fail_rank):
    """Version 0 and one refresh; the trainer lives only in here, as in ``train_net.py``'s ``main``."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    from conftest import build_cfg
    from joindet.data.datasets import register_datasets
    from joindet.engine.pretrain import JoinDetTrainer
    from joindet.priors.generation import shard
    from test_pretraining import PRETRAIN_CONFIG, TINY_PRETRAIN_OPTS

    cfg = build_cfg([*TINY_PRETRAIN_OPTS, "SOLVER.IMS_PER_BATCH", str(2 * comm.get_world_size())],
                    config_file=PRETRAIN_CONFIG, output_dir=out_dir)
    register_datasets(cfg)
    torch.manual_seed(0)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    hook = trainer.prior_hook
    gathered = _record_all_gathers(comm)  # what version 0 and the refresh all_gather (no priors)
    if comm.get_rank() == fail_rank:
        def failing_generator(model, dicts, previous):
            raise RuntimeError(f"injected failure in the refresh generator of rank {comm.get_rank()}")

        hook.generator = failing_generator
    with EventStorage(0) as trainer.storage:  # as TrainerBase.train provides it
        hook._ensure_version0()
        trainer.iter = 1  # the refresh after iteration 2
        hook.refresh()
    comm.all_gather = gathered.original
    rank = comm.get_rank()
    ranks = comm.all_gather({
        "gathers": gathered.payloads,
        "rank": comm.get_rank(),
        "shard": [d["image_id"] for d in shard(hook.dataset_dicts)],
        "low_data_split": sorted(d["image_id"] for d in DatasetCatalog.get("synth_train_10pct")),
    })
    if comm.is_main_process():
        (Path(out_dir) / "ranks.json").write_text(json.dumps(ranks))
    return rank


def worker(out_dir, fail_rank):
    import os

    from joindet.engine.launcher import _close_process_group

    rank = _refresh(out_dir, fail_rank)
    _close_process_group()  # as train_net.py does: a gloo group torn down at interpreter exit can SIGABRT a rank
    threads = sorted((Path("/proc/self/task") / task / "comm").read_text().strip()
                     for task in os.listdir("/proc/self/task"))  # this process's threads, by name
    (Path(out_dir) / f"threads_after_close_{rank}.json").write_text(json.dumps(threads))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("--fail-rank", type=int, default=-1)
    args = parser.parse_args()
    from detectron2.engine import launch

    launch(worker, args.num_gpus, dist_url=args.dist_url, args=(args.out_dir, args.fail_rank))
