"""
Which priors supervise the detector in each version of a pretraining's prior bank, against a reference's
targets and the objects (``joindet.evaluation.targets``), one row per version::

    # a JoinDet run against DETReg's targets (its own version 0's top TRAIN_TOPK, by default)
    python -m joindet.tools.compare_targets --bank output/mini_pretrain_synth/prior_bank --dataset synth_train
    # two runs of the same seed: their last versions' supervising boxes against each other
    python -m joindet.tools.compare_targets --bank RUN_A/pretrain/prior_bank --versions -1 \\
        --reference-bank RUN_B/pretrain/prior_bank --reference-version -1 --dataset clutter_train --json a_vs_b.json

How many priors of an image supervise (``--train-topk``, ``--reference-topk``) is read from the
``config.yaml`` that training wrote beside each bank (``JOINDET.PRIORS.TRAIN_TOPK``, 0 = all) unless given.
``--dataset`` (the labelled view of the run's images, e.g. ``synth_train`` for ``synth_train_unlabeled``) adds
how many supervising boxes lie on an object and how many objects they hit; without it, only the comparison
with the reference. The built-in synthetic sets must be registered with the run's sizes (``--synthetic-*``,
as for ``joindet.tools.eval_priors``).
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from joindet.evaluation.targets import KEPT_IOU, NEW_IOU, OBJECT_IOU, compare_targets
from joindet.priors.bank import PriorBank
from joindet.tools.cli_common import add_synthetic_args, labelled_dicts, parse_versions, register_builtin_from_args

__all__ = ["build_parser", "main", "run_train_topk"]

COLUMNS = (("supervising_per_image", "supervising / image"),
           ("reference_kept", f"reference targets kept (IoU >= {KEPT_IOU:g}), %"),
           ("new", f"new (IoU < {NEW_IOU:g} with all reference targets), %"),
           ("on_object", f"on an object (IoU >= {OBJECT_IOU:g}), %"),
           ("objects_hit", f"objects hit (IoU >= {OBJECT_IOU:g}), %"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m joindet.tools.compare_targets",
                                     description="The priors that supervise, per bank version, against a reference's "
                                                 "targets and the objects.")
    parser.add_argument("--bank", required=True, help="prior bank of the run (OUTPUT_DIR/prior_bank)")
    parser.add_argument("--versions", nargs="+", default=["all"], metavar="V",
                        help="versions to compare (integers, -1 = the latest), or 'all' (default)")
    parser.add_argument("--train-topk", type=int, default=None, metavar="K",
                        help="priors of an image that supervise (default: the run's JOINDET.PRIORS.TRAIN_TOPK)")
    parser.add_argument("--reference-bank", default="", help="the reference's bank (default: --bank)")
    parser.add_argument("--reference-version", type=int, default=0,
                        help="the reference's version (default 0: DETReg's targets; -1 = the latest)")
    parser.add_argument("--reference-topk", type=int, default=None, metavar="K",
                        help="the reference's supervising priors per image (default: its run's TRAIN_TOPK)")
    parser.add_argument("--dataset", default="", help="labelled dataset with the run's image ids, e.g. synth_train")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    add_synthetic_args(parser)
    return parser


def run_train_topk(bank_dir: str) -> int:
    """``JOINDET.PRIORS.TRAIN_TOPK`` of the run whose OUTPUT_DIR holds ``bank_dir`` (its ``config.yaml``)."""
    config = Path(bank_dir).parent / "config.yaml"
    if not config.is_file():
        raise ValueError(f"no {config} beside the bank to read JOINDET.PRIORS.TRAIN_TOPK from: give the number "
                         "of supervising priors (--train-topk / --reference-topk)")
    with open(config, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    try:
        return int(cfg["JOINDET"]["PRIORS"].get("TRAIN_TOPK", 0))
    except (KeyError, TypeError, AttributeError, ValueError):
        raise ValueError(f"{config} has no readable JOINDET.PRIORS.TRAIN_TOPK: give --train-topk / "
                         "--reference-topk") from None


def format_targets_table(rows: Sequence[Tuple[str, dict]]) -> str:
    """A Markdown table, one row per (label, compare_targets result)."""
    lines = ["| version | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for label, result in rows:
        cells = ["-" if result[key] is None else f"{result[key]:.1f}" for key, _ in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, dict]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for name in ("train_topk", "reference_topk"):
            if getattr(args, name) is not None and getattr(args, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        bank = PriorBank(args.bank)
        reference_dir = args.reference_bank or args.bank
        reference_bank = PriorBank(reference_dir)
        versions = parse_versions(args.versions, bank)
        train_topk = run_train_topk(args.bank) if args.train_topk is None else args.train_topk
        reference_topk = run_train_topk(reference_dir) if args.reference_topk is None else args.reference_topk
        reference_version = parse_versions([str(args.reference_version)], reference_bank)[0]
        labelled = None
        if args.dataset:
            register_builtin_from_args(args)
            labelled = labelled_dicts(args.dataset)
        reference = reference_bank.read(reference_version)
        rows = [(f"v{v}", compare_targets(bank.read(v), train_topk, reference, reference_topk, labelled))
                for v in versions]
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"Supervising priors (top {train_topk or 'all'} of each image) against the reference's targets "
          f"(version {reference_version} of {reference_dir}, top {reference_topk or 'all'}):\n")
    print(format_targets_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"bank": str(args.bank), "train_topk": train_topk, "reference_bank": str(reference_dir),
                       "reference_version": reference_version, "reference_topk": reference_topk,
                       "dataset": args.dataset or None, "rows": {label: r for label, r in rows}}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
