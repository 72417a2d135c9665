"""
The Box Smooth Module over a whole bank version, then its write and read, at COCO and ImageNet size::

    python -m joindet.benchmarks.bank [--sizes coco imagenet] [--json bank_bench.json]

Synthetic priors, K = 30 per image in both sets (the current set: the precedent boxes jittered, a third of
them replaced by new random boxes). Each size runs in a fresh process so that its peak memory is its own:
``smooth_version_arrays`` (blocks of 65,536 images), ``PriorBank.write_version_arrays`` (atomic: temporary
folder + rename) and a read of the written version (memory-mapped, every box touched). Reported: seconds
of each stage, and the process's peak RSS above what it held once the two input versions existed,
against the bytes of those input arrays (target: <= 2x).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from joindet.benchmarks import markdown_table, write_rows

SIZES = {"coco": 118_287, "imagenet": 1_281_167, "tiny": 1_000}  # images; K = 30 priors each
K = 30


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _priors(rng, num_images):
    xy = rng.uniform(0, 500, (num_images * K, 2)).astype(np.float32)
    wh = rng.uniform(8, 200, (num_images * K, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    return boxes, rng.uniform(0.05, 1, num_images * K).astype(np.float32)


def run_one(name, seed=0):
    """One size in this process; returns its row."""
    from joindet.priors.bank import PriorBank
    from joindet.priors.box_smooth import BoxSmoothSettings, smooth_version_arrays

    n = SIZES[name]
    rng = np.random.default_rng(seed)
    old_boxes, old_scores = _priors(rng, n)
    new_boxes = old_boxes + rng.normal(0, 4, old_boxes.shape).astype(np.float32)
    new_boxes[:, 2:] = np.maximum(new_boxes[:, 2:], new_boxes[:, :2] + 1)
    replace = rng.random(n * K) < 1 / 3
    fresh, _ = _priors(rng, n)
    new_boxes[replace] = fresh[replace]
    new_scores = rng.uniform(0.05, 1, n * K).astype(np.float32)
    offsets = np.arange(0, (n + 1) * K, K, dtype=np.int64)
    input_mb = sum(a.nbytes for a in (old_boxes, old_scores, new_boxes, new_scores, offsets)) / 2 ** 20
    # torch's one-off start-up (thread pools, allocator) on a tiny version first: not the module's memory
    tiny = np.arange(0, 2 * K + 1, K, dtype=np.int64)
    smooth_version_arrays(old_boxes[:2 * K], old_scores[:2 * K], tiny, new_boxes[:2 * K], new_scores[:2 * K], tiny,
                          BoxSmoothSettings(topk=K))
    base = _rss_mb()
    row = {"size": name, "images": n, "boxes_per_set": n * K, "input_mb": input_mb}
    start = time.perf_counter()
    boxes, scores, out_offsets = smooth_version_arrays(old_boxes, old_scores, offsets, new_boxes, new_scores, offsets,
                                                       BoxSmoothSettings(topk=K))
    row["smooth_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        bank = PriorBank(root)
        start = time.perf_counter()
        bank.write_version_arrays(1, np.arange(n), boxes, scores, out_offsets)
        row["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        version = bank.read(1)
        row["checksum"] = float(version.boxes.sum(dtype=np.float64) + version.offsets[-1])  # touches every box, no copy
        row["read_s"] = time.perf_counter() - start
    row["total_s"] = row["smooth_s"] + row["write_s"] + row["read_s"]
    row["output_boxes"] = int(boxes.shape[0])
    row["peak_extra_mb"] = _rss_mb() - base
    row["peak_over_input"] = row["peak_extra_mb"] / input_mb
    return row


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m joindet.benchmarks.bank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["coco", "imagenet"], choices=sorted(SIZES))
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: one size, row as JSON
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return None
    rows = []
    for name in args.sizes:
        out = subprocess.run([sys.executable, "-m", "joindet.benchmarks.bank", "--one", name], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    cols = ["size", "images", "smooth_s", "write_s", "read_s", "total_s", "input_mb", "peak_extra_mb",
            "peak_over_input"]
    print(markdown_table(rows, cols))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
