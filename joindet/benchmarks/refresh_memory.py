"""
Per-process peak memory of one prior refresh, on 1 and on N (gloo, CPU) processes::

    python -m joindet.benchmarks.refresh_memory [--images 50000] [--priors 30] [--processes 1 2] \\
        [--work-dir output/refresh_memory] [--json refresh_memory.json]

A synthetic bank version 0 (``--images`` images x ``--priors`` random boxes) is written once; then, for
each process count, a fresh copy of it gets one refresh through ``PriorRefreshHook.refresh`` (the hook's
own code: shard, generator, Box Smooth merge, publication of version 1) in a new launch of that many
processes. The generator is a fast fake (``--generator jitter``: each image's priors of version 0, moved by
a few pixels, so that every image goes through the Box Smooth Module; ``nothing``: it finds nothing, every
image keeps its priors and the refresh is the merge bookkeeping and the publication alone), so the figures
are about what the refresh does around the generator: merging, collecting the shards and writing the
version. Each process reports its resident size before the refresh and its peak during it
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; where that is refused, ``ru_maxrss``,
the peak since the process started). The table has one row per process count: the largest peak over
the ranks, the largest growth of a rank's peak over its resident size before the refresh, and the
refresh's seconds.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np

from joindet.benchmarks import markdown_table, write_rows

_RESULT = "REFRESH_MEMORY_RESULT "


def build_parser():
    p = argparse.ArgumentParser(prog="python -m joindet.benchmarks.refresh_memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=50000, help="images in the synthetic bank (default 50000)")
    p.add_argument("--priors", type=int, default=30, help="priors per image (default 30)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    p.add_argument("--generator", choices=sorted(GENERATORS), default="jitter",
                   help="the fake refresh generator: 'jitter' (version 0 moved by a few pixels, so every image "
                        "goes through the Box Smooth Module) or 'nothing' (finds nothing: every image keeps its "
                        "priors, the refresh is only the merge bookkeeping and the publication); default jitter")
    p.add_argument("--work-dir", default="output/refresh_memory")
    p.add_argument("--json", default="", help="write the rows here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: the bank root of one run
    p.add_argument("--num-gpus", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dist-url", default="auto", help=argparse.SUPPRESS)
    return p


def make_bank(root, images, priors, seed=0):
    """Version 0 of a synthetic bank: ``images`` images of 640x480, ``priors`` random boxes each."""
    from joindet.priors.bank import PriorBank

    rng = np.random.default_rng(seed)
    n = images * priors
    xy = rng.uniform(0, 400, size=(n, 2)).astype(np.float32)
    wh = rng.uniform(16, 200, size=(n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, size=n).astype(np.float32)
    offsets = np.arange(images + 1, dtype=np.int64) * priors
    ids = np.arange(1, images + 1, dtype=np.int64)
    PriorBank(root).write_version_arrays(0, ids, boxes, scores, offsets, info={"source": "synthetic"})


def _jitter_generator(model, dicts, previous):
    """The fake refresh generator: each image's priors of the version in use, moved by up to 4 pixels."""
    rng = np.random.default_rng(1 + min((d["image_id"] for d in dicts), default=0))
    out = {}
    for d in dicts:
        boxes, scores = previous.get(d["image_id"])
        out[d["image_id"]] = (boxes + rng.uniform(-4, 4, size=boxes.shape).astype(np.float32), scores)
    return out


def _nothing_generator(model, dicts, previous):
    """The fake refresh generator that finds nothing: every image keeps its priors of the version in use."""
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
    return {d["image_id"]: empty for d in dicts}


GENERATORS = {"jitter": _jitter_generator, "nothing": _nothing_generator}


def _peak_kib(reset):
    """The peak resident size in KiB: ``VmHWM`` if it was reset, else ``ru_maxrss`` (since start)."""
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _worker_main(root, generator):
    import gc

    import torch
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    from joindet.engine.prior_hook import PriorRefreshHook
    from joindet.priors.active import ActivePriors
    from joindet.utils.memory import release_free_heap, rss_mib

    active = ActivePriors(root)
    active.set_version(0)
    ids = np.asarray(active.current().image_ids).tolist()
    dicts = [{"image_id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in ids]
    hook = PriorRefreshHook(active_priors=active, dataset_dicts=dicts, dataset_name="synthetic_bank",
                            init_source=None, generator=GENERATORS[generator], period=1, stats_sample=0)
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(model=torch.nn.Identity(), iter=0, max_iter=10, storage=storage)
        gc.collect()
        release_free_heap()
        comm.synchronize()
        before = rss_mib()
        reset = _reset_peak()
        start = time.perf_counter()
        hook.refresh()
        seconds = time.perf_counter() - start
        peak = _peak_kib(reset) / 1024
    row = {"rank": comm.get_rank(), "rss_before_mib": before, "peak_mib": peak, "seconds": seconds,
           "peak_since": "refresh" if reset else "process start"}
    rows = comm.all_gather(row)  # a few numbers per rank, after the refresh
    if comm.is_main_process():
        print(_RESULT + json.dumps(rows), flush=True)


def _run(root, processes, port, generator):
    cmd = [sys.executable, "-m", "joindet.benchmarks.refresh_memory", "--worker", str(root), "--generator", generator,
           "--num-gpus", str(processes), "--dist-url", f"tcp://127.0.0.1:{port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"refresh on {processes} process(es) failed:\n{proc.stdout[-4000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    raise SystemExit(f"no result from the refresh on {processes} process(es):\n{proc.stdout[-4000:]}")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        from detectron2.engine import launch

        launch(_worker_main, args.num_gpus, dist_url=args.dist_url, args=(args.worker, args.generator))
        return None
    source = os.path.join(args.work_dir, "source")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    make_bank(source, args.images, args.priors)
    table = []
    for n in args.processes:
        root = os.path.join(args.work_dir, f"bank_{n}")
        shutil.copytree(source, root)
        ranks = _run(root, n, _free_port(), args.generator)
        table.append({"processes": n, "generator": args.generator, "images": args.images,
                      "boxes": args.images * args.priors,
                      "max_peak_mib": max(r["peak_mib"] for r in ranks),
                      "max_growth_mib": max(r["peak_mib"] - r["rss_before_mib"] for r in ranks),
                      "rss_before_mib": max(r["rss_before_mib"] for r in ranks),
                      "seconds": max(r["seconds"] for r in ranks), "peak_since": ranks[0]["peak_since"],
                      "ranks": ranks})
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    print(markdown_table(table, ["processes", "generator", "images", "boxes", "rss_before_mib", "max_peak_mib",
                                 "max_growth_mib", "seconds", "peak_since"]))
    write_rows(args.json, table)
    return table


if __name__ == "__main__":
    main()
