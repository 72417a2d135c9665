"""
NCut priors against selective search, per image, measured side by side on the same images::

    python -m joindet.benchmarks.ncut [--num-images 8] [--grids 32 64] [--json ncut_bench.json] [--device cpu]

For each grid size g, synthetic images of 8 g pixels (so a stride-8 feature map has g x g patches):
selective search at DETReg's setting (short side 128, OpenCV fast mode, one thread), and NCut priors
(3 rounds, top 30, tau 0.2) on d = 256 patch features of the same images -- the frozen ImageNet Lite0's
stride-8 features through a fixed random projection to 256 channels (the encoder forward is timed apart
and not counted in NCut's time) -- with the partial solver (``lanczos``) and the dense float64 reference
(``dense``, skipped above ``--dense-max`` patches per side). NCut uses the process's torch threads.
Medians over the images after one warm-up image, one image at a time; ``batched``: the same images in
one batch, as a refresh runs them (time per image). The largest tensor each NCut path allocates per image
(the N x N graph) and the process's peak RSS are reported.

``--device cuda``: the encoder forward and NCut (features, graph, solvers) run on that device, selective
search stays on the CPU (one thread, as DETReg runs it); every timed call is bracketed by
``torch.cuda.synchronize`` and each measurement also reports its peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before it) beyond what was allocated before it (the features
of all the images and the backbone), in MiB (``*_peak_mib``). The connected components and the NMS run on
the CPU on either device (the masks are copied there), as in a refresh.
"""
import argparse
import resource
import statistics
import time
from typing import Optional, Sequence

import torch

from joindet.benchmarks import markdown_table, write_rows
from joindet.modeling.backbone import TimmBackbone
from joindet.modeling.backbone.lite0_weights import LITE0_PACKAGE, LITE0_PIXEL_MEAN, LITE0_PIXEL_STD
from joindet.priors.ncut import priors_from_features
from joindet.priors.selective_search import selective_search_boxes
from joindet.tools.bench_selective_search import synthetic_images

__all__ = ["build_parser", "run", "main"]


class _Meter:
    """Timings on ``device``: CUDA is synchronised before every clock reading there, and the peak memory
    allocated during a measurement beyond what was allocated before it is tracked (None on the CPU)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start(self):
        """Begin a measurement (resets the CUDA peak)."""
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)

    def peak_mib(self):
        """Peak MiB allocated since :meth:`start` beyond what was allocated then (None on the CPU)."""
        if not self.cuda:
            return None
        self.sync()
        return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20

    def median_ms(self, fn, items):
        """Median ms of ``fn(item)`` over ``items`` after a warm-up call on the first; and :meth:`peak_mib`."""
        self.start()
        fn(items[0])  # warm-up
        times = []
        for item in items:
            self.sync()
            start = time.perf_counter()
            fn(item)
            self.sync()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times), self.peak_mib()


def run(num_images=8, grids=(32, 64), dense_max=40, feature_dim=256, seed=0, device="cpu"):
    """Returns one row (dict) per grid size. ``device``: where the encoder and NCut run (selective search
    runs on the CPU); on CUDA the rows also hold the peak GPU memory of each measurement (``*_peak_mib``)."""
    meter = _Meter(device)
    device = meter.device
    backbone = TimmBackbone("efficientnet_lite0", out_features=("res3",), weights=LITE0_PACKAGE).eval().to(device)
    mean = torch.tensor(LITE0_PIXEL_MEAN).view(1, 3, 1, 1).to(device)
    std = torch.tensor(LITE0_PIXEL_STD).view(1, 3, 1, 1).to(device)
    projection = (torch.randn(40, feature_dim, generator=torch.Generator().manual_seed(seed)) / 40 ** 0.5).to(device)
    rows = []
    for g in grids:
        images = synthetic_images(num_images + 1, 8 * g, 8 * g, seed=seed)

        def features(image):
            x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                return backbone((x - mean) / std)["res3"].permute(0, 2, 3, 1) @ projection  # (1, g, g, d)

        feats = [features(im) for im in images]
        meter.sync()  # (selective search is timed on the CPU alone)
        ss_ms, _ = _Meter("cpu").median_ms(lambda im: selective_search_boxes(im, 30, 128, "fast", 1), images)
        row = {"grid": f"{g}x{g}", "patches": g * g, "images": num_images, "image_px": 8 * g, "device": str(device),
               "selective_search_ms": ss_ms}
        row["encoder_ms"], peak = meter.median_ms(features, images)
        if meter.cuda:
            row["encoder_peak_mib"] = peak
        for solver in ("lanczos", "dense"):
            if solver == "dense" and g > dense_max:
                row[f"ncut_{solver}_ms"] = None
                continue
            row[f"ncut_{solver}_ms"], peak = meter.median_ms(
                lambda f: priors_from_features(f, [(8 * g, 8 * g)], tau=0.2, num_rounds=3, topk=30, solver=solver),
                feats)
            row[f"graph_{solver}_mb"] = (g * g) ** 2 * (4 if solver == "lanczos" else 8) / 2 ** 20
            if meter.cuda:
                row[f"ncut_{solver}_peak_mib"] = peak
        # the refresh's way: all the images in one batch (JOINDET.NCUT.BATCH_SIZE), time per image
        batch = torch.cat(feats[1:])
        priors_from_features(batch[:1], [(8 * g, 8 * g)], tau=0.2, num_rounds=3, topk=30)  # warm-up
        meter.start()
        start = time.perf_counter()
        priors_from_features(batch, [(8 * g, 8 * g)] * len(batch), tau=0.2, num_rounds=3, topk=30)
        meter.sync()
        row["ncut_lanczos_batched_ms"] = 1000 * (time.perf_counter() - start) / len(batch)
        if meter.cuda:
            row["ncut_lanczos_batched_peak_mib"] = meter.peak_mib()
        row["ss_over_lanczos"] = row["selective_search_ms"] / row["ncut_lanczos_ms"]
        row["ss_over_lanczos_batched"] = row["selective_search_ms"] / row["ncut_lanczos_batched_ms"]
        row["dense_over_lanczos"] = (row["ncut_dense_ms"] / row["ncut_lanczos_ms"]) if row["ncut_dense_ms"] else None
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
    return rows


COLUMNS = ["grid", "selective_search_ms", "encoder_ms", "ncut_lanczos_ms", "ncut_lanczos_batched_ms", "ncut_dense_ms",
           "ss_over_lanczos", "ss_over_lanczos_batched", "dense_over_lanczos", "graph_lanczos_mb", "peak_rss_mb"]
CUDA_COLUMNS = ["encoder_peak_mib", "ncut_lanczos_peak_mib", "ncut_lanczos_batched_peak_mib", "ncut_dense_peak_mib"]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m joindet.benchmarks.ncut", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64], help="patches per side")
    parser.add_argument("--dense-max", type=int, default=40, help="largest grid the dense reference runs on")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--device", default="cpu",
                        help="where the encoder and NCut run, e.g. cuda (selective search stays on the CPU)")
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.num_images < 1 or any(g < 2 for g in args.grids):
        build_parser().error("--num-images must be >= 1 and every grid >= 2")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        build_parser().error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build_parser().error(f"--device {args.device}: no CUDA device (torch.cuda.is_available() is False)")
    rows = run(args.num_images, args.grids, args.dense_max, device=device)
    on = (f"on {torch.cuda.get_device_name(device)}" if device.type == "cuda"
          else f"{torch.get_num_threads()} torch threads")
    print(f"NCut priors (3 rounds, d 256) vs selective search (DETReg setting, CPU, one thread), per image, NCut {on}, "
          f"medians of {args.num_images} images:\n")
    print(markdown_table(rows, COLUMNS + (CUDA_COLUMNS if device.type == "cuda" else [])))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
