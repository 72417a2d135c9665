"""
NCut priors against selective search, per image, measured side by side on the same images::

    python -m joindet.benchmarks.ncut [--num-images 8] [--grids 32 64] [--json ncut_bench.json]

For each grid size g, synthetic images of 8 g pixels (so a stride-8 feature map has g x g patches):
selective search at DETReg's setting (short side 128, OpenCV fast mode, one thread), and NCut priors
(3 rounds, top 30, tau 0.2) on d = 256 patch features of the same images -- the frozen ImageNet Lite0's
stride-8 features through a fixed random projection to 256 channels (the encoder forward is timed apart
and not counted in NCut's time) -- with the partial solver (``lanczos``) and the dense float64 reference
(``dense``, skipped above ``--dense-max`` patches per side). NCut uses the process's torch threads.
Medians over the images after one warm-up image, one image at a time; ``batched``: the same images in
one batch, as a refresh runs them (time per image). The largest tensor each NCut path allocates per image
(the N x N graph) and the process's peak RSS are reported.
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


def _median_ms(fn, items):
    fn(items[0])  # warm-up
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(num_images=8, grids=(32, 64), dense_max=40, feature_dim=256, seed=0):
    """Returns one row (dict) per grid size."""
    backbone = TimmBackbone("efficientnet_lite0", out_features=("res3",), weights=LITE0_PACKAGE).eval()
    mean = torch.tensor(LITE0_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE0_PIXEL_STD).view(1, 3, 1, 1)
    projection = torch.randn(40, feature_dim, generator=torch.Generator().manual_seed(seed)) / 40 ** 0.5
    rows = []
    for g in grids:
        images = synthetic_images(num_images + 1, 8 * g, 8 * g, seed=seed)

        def features(image):
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                return backbone((x - mean) / std)["res3"].permute(0, 2, 3, 1) @ projection  # (1, g, g, d)

        feats = [features(im) for im in images]
        row = {"grid": f"{g}x{g}", "patches": g * g, "images": num_images, "image_px": 8 * g,
               "selective_search_ms": _median_ms(lambda im: selective_search_boxes(im, 30, 128, "fast", 1), images),
               "encoder_ms": _median_ms(features, images)}
        for solver in ("lanczos", "dense"):
            if solver == "dense" and g > dense_max:
                row[f"ncut_{solver}_ms"] = None
                continue
            row[f"ncut_{solver}_ms"] = _median_ms(
                lambda f: priors_from_features(f, [(8 * g, 8 * g)], tau=0.2, num_rounds=3, topk=30, solver=solver),
                feats)
            row[f"graph_{solver}_mb"] = (g * g) ** 2 * (4 if solver == "lanczos" else 8) / 2 ** 20
        # the refresh's way: all the images in one batch (JOINDET.NCUT.BATCH_SIZE), time per image
        batch = torch.cat(feats[1:])
        priors_from_features(batch[:1], [(8 * g, 8 * g)], tau=0.2, num_rounds=3, topk=30)  # warm-up
        start = time.perf_counter()
        priors_from_features(batch, [(8 * g, 8 * g)] * len(batch), tau=0.2, num_rounds=3, topk=30)
        row["ncut_lanczos_batched_ms"] = 1000 * (time.perf_counter() - start) / len(batch)
        row["ss_over_lanczos"] = row["selective_search_ms"] / row["ncut_lanczos_ms"]
        row["ss_over_lanczos_batched"] = row["selective_search_ms"] / row["ncut_lanczos_batched_ms"]
        row["dense_over_lanczos"] = (row["ncut_dense_ms"] / row["ncut_lanczos_ms"]) if row["ncut_dense_ms"] else None
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
    return rows


COLUMNS = ["grid", "selective_search_ms", "encoder_ms", "ncut_lanczos_ms", "ncut_lanczos_batched_ms", "ncut_dense_ms",
           "ss_over_lanczos", "ss_over_lanczos_batched", "dense_over_lanczos", "graph_lanczos_mb", "peak_rss_mb"]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m joindet.benchmarks.ncut", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64], help="patches per side")
    parser.add_argument("--dense-max", type=int, default=40, help="largest grid the dense reference runs on")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.num_images < 1 or any(g < 2 for g in args.grids):
        build_parser().error("--num-images must be >= 1 and every grid >= 2")
    rows = run(args.num_images, args.grids, args.dense_max)
    print(f"NCut priors (3 rounds, d 256) vs selective search (DETReg setting), per image, {torch.get_num_threads()} "
          f"torch threads, medians of {args.num_images} images:\n")
    print(markdown_table(rows, COLUMNS))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
