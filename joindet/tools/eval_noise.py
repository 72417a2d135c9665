"""
The evaluation set's share of the noise of a fine-tuned AP: the bootstrap over its images
(:mod:`joindet.evaluation.bootstrap`), for one or more runs' detections on the same set::

    python -m joindet.tools.eval_noise --gt ~/.cache/joindet/synthetic/n500_s256_seed0/val.json \\
        --detections RUN_A/finetune/inference/coco_instances_results.json RUN_B/finetune/inference/... \\
        --num-images 100 500 --resamples 100 --json eval_noise.json

For each detection file (``COCOEvaluator`` writes ``coco_instances_results.json`` into the fine-tuning's
``inference/`` folder) and each ``--num-images`` n: the AP on the whole set and the standard deviation of
the AP over ``--resamples`` sets of n images drawn with replacement. The same draws score every file, so
the spread of the difference between a file and the first one is printed too: the evaluation set's share
of the noise of a paired difference between two methods.
"""
import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from joindet.evaluation.bootstrap import bootstrap_ap_sizes
from joindet.utils.atomic import write_json_atomic

__all__ = ["build_parser", "evaluation_noise", "main"]


def evaluation_noise(gt_json: str, detection_files: Sequence[str], num_images: Sequence[Optional[int]] = (None,),
                     resamples: int = 100, seed: int = 0) -> dict:
    """
    The bootstrap of every detection file at every set size, and the spread of each file's resampled AP
    minus the first file's on the same draws.

    Returns:
        {"gt", "resamples", "seed", "files": [{"detections", "ap", "by_size": {n: {"std", "mean",
        "paired_std_vs_first"}}}]}; n is the set size as text ("all" for None).
    """
    from pycocotools.coco import COCO

    if not detection_files:
        raise ValueError("give at least one detection file")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_json))
    files, first = [], {}
    for path in detection_files:
        try:
            detections = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"detection file {path}: {e}") from e
        if not isinstance(detections, list):
            raise ValueError(f"detection file {path} holds {type(detections).__name__}, not a list of detections")
        boot = bootstrap_ap_sizes(coco_gt, detections, num_images, resamples, seed)
        entry = {"detections": str(path), "ap": boot["ap"], "by_size": {}}
        for n, stat in zip(num_images, boot["by_size"]):
            key = "all" if n is None else str(n)
            aps = np.asarray(stat["aps"])
            first.setdefault(key, aps)
            entry["by_size"][key] = {"num_images": stat["num_images"], "mean": stat["mean"], "std": stat["std"],
                                     "paired_std_vs_first": float(np.nanstd(aps - first[key], ddof=1))}
        files.append(entry)
    return {"gt": str(gt_json), "resamples": resamples, "seed": seed, "files": files}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m joindet.tools.eval_noise",
                                     description="Bootstrap the evaluation images: how noisy is a fine-tuned AP?")
    parser.add_argument("--gt", required=True, help="the evaluation set's COCO JSON")
    parser.add_argument("--detections", nargs="+", required=True, metavar="JSON",
                        help="COCO-format detection files on that set (coco_instances_results.json)")
    parser.add_argument("--num-images", nargs="+", type=int, default=None, metavar="N",
                        help="images per resampled set (default: as many as the set has)")
    parser.add_argument("--resamples", type=int, default=100, help="resampled sets (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        result = evaluation_noise(args.gt, args.detections, args.num_images or [None], args.resamples, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("| detections | AP | images | AP std | std of the difference with the first |")
    print("|---|---:|---:|---:|---:|")
    for entry in result["files"]:
        for key, stat in entry["by_size"].items():
            print(f"| {entry['detections']} | {entry['ap']:.2f} | {stat['num_images']} | {stat['std']:.2f} | "
                  f"{stat['paired_std_vs_first']:.2f} |")
    if args.json:
        write_json_atomic(args.json, result, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
