"""The main job on the built-in default, on the CPU: ``python -m joindet.demo`` (``make demo``).

1. JoinDet pretraining of the mini Deformable DETR (frozen ImageNet Lite0 backbone) on the synthetic
   images, without their labels (configs/mini/pretrain_synth.yaml: its refresh, the best measured here;
   ``--paper`` the paper's refresh instead, ``--generator`` another refresh generator), then the quality of
   every prior version against the hidden boxes;
2. fine-tuning of the pretrained detector on 10% of the synthetic labels
   (configs/mini/finetune_synth_10pct.yaml);
3. evaluation on the synthetic val split: the COCO-style AP table.
``--baseline`` also fine-tunes the same way without detector pretraining, for comparison.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .evaluation.prior_quality import format_prior_quality_table

__all__ = ["main"]


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# the paper's refresh: NCut on the encoder output, the Box Smooth Module as published (no Soft-NMS), every
# prior an object (objectness target 1)
PAPER_OPTS = ["JOINDET.REFRESH.GENERATOR", "ncut_encoder", "JOINDET.SMOOTH.SOFT_NMS_SIGMA", "0.0",
              "JOINDET.PRIORS.OBJECTNESS_TARGET", "one"]


def _config(name, config_dir):
    path = Path(config_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found: run the demo from a checkout of the repository or "
                                f"pass --config-dir")
    return str(path)


def _run(config_file, opts, output_dir):
    """One training stage in its own process (its own logging and dataset registrations), with
    Detectron2's progress log on the console; returns the stage's evaluation results."""
    cmd = [sys.executable, "-m", "joindet.engine.launcher", "--config-file", config_file,
           "OUTPUT_DIR", str(output_dir)] + [str(o) for o in opts]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(Path(output_dir) / "eval_results.json") as f:
        return json.load(f)


def _ap_table(results):
    """Markdown table of the bbox AP in ``results`` (Detectron2 returns {"bbox": ...} for one test set,
    {dataset: {"bbox": ...}} for several: the first is shown)."""
    bbox = results["bbox"] if "bbox" in results else next(iter(results.values()))["bbox"]
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{bbox[k]:.1f}" for k in keys) + " |")


def _prior_quality(bank_root):
    """The quality of every prior version, as the refresh hook measured it during pretraining."""
    with open(Path(bank_root) / "prior_quality.json") as f:
        rows = [(label, metrics) for label, metrics in json.load(f)]
    return format_prior_quality_table(rows), rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo", help="where checkpoints, logs and the bank go")
    parser.add_argument("--config-dir", default=str(CONFIG_DIR), help="the repository's configs/ folder")
    parser.add_argument("--pretrain-opts", nargs="*", default=[], help="extra KEY VALUE overrides for pretraining")
    parser.add_argument("--finetune-opts", nargs="*", default=[], help="extra KEY VALUE overrides for fine-tuning")
    parser.add_argument("--generator", default="",
                        help="refresh generator (JOINDET.REFRESH.GENERATOR): detector, detector_ncut, rescore or "
                             "ncut_encoder (the paper's); default: the config's")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's refresh instead of the config's: " + " ".join(PAPER_OPTS))
    parser.add_argument("--baseline", action="store_true",
                        help="also fine-tune without detector pretraining (same split and schedule)")
    args = parser.parse_args(argv)
    if args.paper and args.generator:
        parser.error("--paper sets the refresh generator (ncut_encoder): give --paper or --generator, not both")
    out = Path(args.output_dir)
    timings, summary = {}, {}

    start = time.perf_counter()
    pretrain_dir = out / "pretrain"
    generator_opts = []
    if args.paper:
        generator_opts = PAPER_OPTS
    elif args.generator:
        generator_opts = ["JOINDET.REFRESH.GENERATOR", args.generator]
    _run(_config("mini/pretrain_synth.yaml", args.config_dir), generator_opts + args.pretrain_opts, pretrain_dir)
    timings["pretrain_s"] = time.perf_counter() - start
    table, rows = _prior_quality(pretrain_dir / "prior_bank")
    summary["prior_quality"] = {label: m for label, m in rows}

    start = time.perf_counter()
    results = _run(_config("mini/finetune_synth_10pct.yaml", args.config_dir),
                   ["MODEL.WEIGHTS", pretrain_dir / "model_final.pth"] + args.finetune_opts, out / "finetune")
    timings["finetune_s"] = time.perf_counter() - start
    summary["finetune"] = results

    if args.baseline:
        start = time.perf_counter()
        baseline = _run(_config("mini/finetune_synth_10pct.yaml", args.config_dir),
                        ["MODEL.WEIGHTS", ""] + args.finetune_opts, out / "baseline")
        timings["baseline_s"] = time.perf_counter() - start
        summary["baseline"] = baseline

    summary["timings"] = timings
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print("\n=== JoinDet demo (synthetic set, CPU) ===")
    print(f"\nPrior quality per bank version (class-agnostic, against the unused train boxes):\n{table}")
    print(f"\nFine-tuned on 10% of the labels, synth_val bbox AP:\n{_ap_table(results)}")
    if args.baseline:
        print(f"\nSame fine-tuning without detector pretraining:\n{_ap_table(summary['baseline'])}")
    print("\nWall time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"Summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
