"""
Compare prior sources side by side on one dataset, class-agnostic, against the images' hidden boxes::

    # version-0 sources (the model with its initial weights: the frozen pretrained backbone)
    python -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \\
        --sources ncut_backbone selective_search --dataset synth_train --json v0_sources.json
    # refresh generators on a trained model, each smoothed against a bank version
    python -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \\
        --weights output/demo/pretrain/model_final.pth --bank output/demo/pretrain/prior_bank --version 0 \\
        --generators ncut_encoder detector detector_ncut rescore --dataset synth_train

Every source and generator is built from the same config (``--opts`` overrides it); a source replaces
``JOINDET.PRIORS.INIT_SOURCE``, a generator ``JOINDET.REFRESH.GENERATOR``. A generator's row is scored
twice: its raw output ("current priors") and what a refresh would publish from it (the bank version merged
with it by the Box Smooth Module, with the config's m_s and threshold; images where the generator found
nothing keep their priors). Prints a Markdown table with
the seconds each took, writes the rows as JSON.
"""
import argparse
import json
import time
from typing import List, Optional, Sequence

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from joindet.checkpoint import JoinDetCheckpointer
from joindet.config import add_joindet_config, validate_config
from joindet.data.datasets import check_dataset_names, register_datasets
from joindet.data.mapper import DetrDatasetMapper
from joindet.evaluation.prior_quality import evaluate_priors, format_prior_quality_table
from joindet.priors.bank import PriorBank
from joindet.priors.box_smooth import BoxSmoothSettings, merge_refresh
from joindet.priors.refresh import build_refresh_generator
from joindet.priors.sources import build_prior_source_from_cfg

__all__ = ["build_parser", "compare_priors", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m joindet.tools.compare_priors",
                                     description="Class-agnostic quality of prior sources and refresh generators.")
    parser.add_argument("--config-file", required=True, help="a pretraining config (yacs)")
    parser.add_argument("--sources", nargs="*", default=[], metavar="NAME", help="version-0 prior sources")
    parser.add_argument("--generators", nargs="*", default=[], metavar="NAME", help="refresh generators")
    parser.add_argument("--weights", default="", help="model weights for the generators (MODEL.WEIGHTS)")
    parser.add_argument("--bank", default="", help="prior bank whose --version the generators are smoothed with")
    parser.add_argument("--version", type=int, default=-1, help="bank version (-1 = the latest)")
    parser.add_argument("--dataset", required=True,
                        help="labelled dataset with the same image ids as the config's DATASETS.TRAIN")
    parser.add_argument("--num-images", type=int, default=0, help="only the first N images (0 = all)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def _setup(cfg_file, opts):
    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(cfg_file)
    cfg.merge_from_list(list(opts))
    validate_config(cfg)
    register_datasets(cfg)
    check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    return cfg


def _model(cfg, weights):
    model = build_model(cfg)
    if weights:
        JoinDetCheckpointer(model).load(weights)
    return model.eval()


def compare_priors(cfg_file: str, dataset: str, sources: Sequence[str] = (), generators: Sequence[str] = (),
                   weights: str = "", bank: str = "", version: int = -1, opts: Sequence[str] = (),
                   num_images: int = 0) -> List[tuple]:
    """Score each source / generator (see the module docstring); returns [(label, evaluate_priors result
    + ``seconds``), ...]."""
    cfg = _setup(cfg_file, opts)
    check_dataset_names([dataset], "--dataset")
    dicts = [d for n in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(n)]
    labelled = DatasetCatalog.get(dataset)
    if num_images > 0:
        dicts = dicts[:num_images]
        ids = {d["image_id"] for d in dicts}
        labelled = [d for d in labelled if d["image_id"] in ids]
    rows = []

    def score(label, priors, seconds):
        rows.append((label, {**evaluate_priors(priors, labelled), "seconds": seconds}))

    for name in sources:
        source_cfg = _setup(cfg_file, list(opts) + ["JOINDET.PRIORS.INIT_SOURCE", name])
        model = _model(source_cfg, source_cfg.MODEL.WEIGHTS)
        source = build_prior_source_from_cfg(source_cfg, DetrDatasetMapper(source_cfg, is_train=False))
        start = time.perf_counter()
        with torch.no_grad():
            priors = source(dicts, model=model)
        score(f"{name} (version 0)", {d["image_id"]: p for d, p in zip(dicts, priors)}, time.perf_counter() - start)
    if generators:
        if not bank:
            raise ValueError("--generators needs --bank (the version they are smoothed with)")
        prior_bank = PriorBank(bank)
        previous = prior_bank.read(prior_bank.latest_version() if version < 0 else version)
        score(f"bank v{previous.version}", previous, 0.0)
        model = _model(cfg, weights)
        mapper = DetrDatasetMapper(cfg, is_train=False)
        smooth = BoxSmoothSettings(cfg)
        for name in generators:
            generator_cfg = cfg.clone()
            generator_cfg.defrost()
            generator_cfg.JOINDET.REFRESH.GENERATOR = name
            start = time.perf_counter()
            current = build_refresh_generator(generator_cfg, mapper)(model, dicts, previous)
            seconds = time.perf_counter() - start
            score(f"{name} (current)", current, seconds)
            merged, _ = merge_refresh(previous, current, [d["image_id"] for d in dicts], smooth)
            score(f"{name} (smoothed with v{previous.version})", merged, seconds)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[tuple]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.sources and not args.generators:
        parser.error("give --sources and/or --generators")
    try:
        rows = compare_priors(args.config_file, args.dataset, args.sources, args.generators, args.weights, args.bank,
                              args.version, args.opts, args.num_images)
    except (ValueError, FileNotFoundError, KeyError) as e:
        parser.error(str(e))
    print(f"Priors on '{args.dataset}' (class-agnostic, percent):\n")
    print(format_prior_quality_table(rows))
    print("\n" + ", ".join(f"{label}: {r['seconds']:.1f} s" for label, r in rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([[label, r] for label, r in rows], f, indent=2, sort_keys=True)
    return rows


if __name__ == "__main__":
    main()
