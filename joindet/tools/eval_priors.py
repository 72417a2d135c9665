"""
Score the versions of a prior bank against a labelled dataset's boxes (class-agnostic AR, AP,
CorLoc) and print a Markdown table, one row per version::

    python -m joindet.tools.eval_priors --bank output/prior_bank --dataset synth_train
    python -m joindet.tools.eval_priors --bank output/prior_bank --versions 0 2 --dataset synth_train \\
        --synthetic-num-train 60 --synthetic-image-size 256 --json prior_quality.json
    # each version also with its scores through Gaussian Soft-NMS (boxes kept): a version-0 reference
    # for runs whose Box Smooth merge applies it (JOINDET.SMOOTH.SOFT_NMS_SIGMA)
    python -m joindet.tools.eval_priors --bank output/prior_bank --dataset clutter_train --soft-nms-sigma 0.5

The built-in synthetic datasets are registered with the given sizes (they must match the run
that wrote the bank, so the image ids agree); Detectron2's built-ins (COCO, VOC) are available
under ``$DETECTRON2_DATASETS``. Priors are usually generated on an unlabelled view such as
``synth_train_unlabeled``: evaluate against its labelled counterpart (``synth_train``), which has
the same image ids. The clutter domain's sets (``clutter_*``) are registered with their defaults
(unless this process registered them already).
"""
import argparse
import json
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from joindet.evaluation.prior_quality import evaluate_priors, format_prior_quality_table
from joindet.priors.bank import PriorBank
from joindet.priors.box_smooth import soft_nms_scores
from joindet.tools.cli_common import add_synthetic_args, labelled_dicts, parse_versions, register_builtin_from_args

__all__ = ["build_parser", "evaluate_bank", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.eval_priors",
        description="Class-agnostic recall / precision / CorLoc of each prior-bank version.",
    )
    parser.add_argument("--bank", required=True, help="prior bank folder (holds v0000/, v0001/, ...)")
    parser.add_argument(
        "--versions", nargs="+", default=["all"], metavar="V",
        help="versions to evaluate (integers), or 'all' (default)",
    )
    parser.add_argument("--dataset", required=True, help="registered dataset with boxes, e.g. synth_train")
    parser.add_argument(
        "--max-dets", nargs="+", type=int, default=[1, 10, 30, 100], metavar="K",
        help="priors per image at which recall is measured (AP uses the largest)",
    )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--soft-nms-sigma", type=float, default=0.0, metavar="S",
                        help="also score each version with its scores through Gaussian Soft-NMS of this sigma "
                             "(boxes kept; rows 'v<k> + Soft-NMS S'); 0 = no such rows (default)")
    add_synthetic_args(parser)
    return parser


def soft_nms_version(version, sigma: float) -> dict:
    """A bank version as {image_id: (boxes, scores)} with each image's scores through Gaussian Soft-NMS
    (``box_smooth.soft_nms_scores``, all images at once); the boxes are the version's."""
    boxes, offsets = np.asarray(version.boxes), np.asarray(version.offsets)
    counts = torch.as_tensor(np.diff(offsets))
    image = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    scores = soft_nms_scores(torch.as_tensor(boxes, dtype=torch.float64),
                             torch.as_tensor(np.asarray(version.scores), dtype=torch.float64),
                             image, counts.numel(), sigma).numpy()
    return {int(i): (boxes[a:b], scores[a:b]) for i, a, b in zip(version.image_ids, offsets[:-1], offsets[1:])}


def evaluate_bank(
    bank_dir: str, versions: Sequence[str], dataset: str, max_dets: Sequence[int] = (1, 10, 30, 100),
    soft_nms_sigma: float = 0.0,
) -> List[Tuple[str, dict]]:
    """Evaluate the chosen versions (integers as strings, or ["all"]) of a bank against a
    registered dataset; returns [("v<version>", evaluate_priors result), ...], with ``soft_nms_sigma`` > 0
    each followed by ("v<version> + Soft-NMS <sigma>", the same with re-ranked scores)."""
    if soft_nms_sigma < 0:
        raise ValueError(f"--soft-nms-sigma must be >= 0, got {soft_nms_sigma}")
    bank = PriorBank(bank_dir)
    chosen = parse_versions(versions, bank)
    dicts = labelled_dicts(dataset)
    rows = []
    for v in chosen:
        version = bank.read(v)
        rows.append((f"v{v}", evaluate_priors(version, dicts, max_dets=max_dets)))
        if soft_nms_sigma > 0:
            rows.append((f"v{v} + Soft-NMS {soft_nms_sigma:g}",
                         evaluate_priors(soft_nms_version(version, soft_nms_sigma), dicts, max_dets=max_dets)))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, dict]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_builtin_from_args(args)
        rows = evaluate_bank(args.bank, args.versions, args.dataset, args.max_dets, args.soft_nms_sigma)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"Prior quality on '{args.dataset}' (class-agnostic, percent):\n")
    print(format_prior_quality_table(rows))
    for label, result in rows:
        if result["missing_images"]:
            print(
                f"note: {label} lacks {result['missing_images']} of the {result['num_images']} images "
                "(scored as having no priors)",
                file=sys.stderr,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({label: result for label, result in rows}, f, indent=2, sort_keys=True)
    return rows


if __name__ == "__main__":
    main()
