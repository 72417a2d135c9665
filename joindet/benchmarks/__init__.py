"""Benchmark scripts: ``python -m joindet.benchmarks.<name>``; each prints a table, writes JSON, and
measures its ratios side by side in one run (medians after a warm-up)."""
import argparse
import json
import os

from ..model_zoo import get_config_file

__all__ = ["MINI_PRETRAIN_CONFIG", "markdown_table", "mini_pretraining_cfg", "mini_pretraining_parser", "write_rows"]


MINI_PRETRAIN_CONFIG = get_config_file("mini/pretrain_synth.yaml")  # the packaged config (joindet.model_zoo)


def markdown_table(rows, cols):
    """A Markdown table of ``rows`` (dicts) with the columns ``cols``: floats with 2 decimals, None as -."""
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def write_rows(path, rows):
    """Write ``rows`` as JSON to ``path`` (nothing when ``path`` is empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)


def mini_pretraining_cfg(config_file, output_dir, num_images, settings=(), opts=()):
    """The yacs cfg of a benchmark's in-process pretraining: ``config_file`` on a synthetic set of
    ``num_images`` images of its own (``<output_dir>/synthetic``: the shared cache is not touched), no
    prior-quality evaluation, ``OUTPUT_DIR`` ``<output_dir>/run``, then the benchmark's ``settings`` and the
    user's ``opts`` (KEY VALUE lists); validated, datasets registered. Returns a mutable cfg."""
    from detectron2.config import get_cfg

    from joindet.config import add_joindet_config, validate_config
    from joindet.data.datasets import register_datasets

    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(config_file)
    out = os.path.abspath(output_dir)
    cfg.merge_from_list(["DATASETS.SYNTHETIC.NUM_TRAIN", str(num_images), "DATASETS.SYNTHETIC.ROOT",
                         os.path.join(out, "synthetic"), "JOINDET.PRIORS.EVAL_DATASET", "",
                         "OUTPUT_DIR", os.path.join(out, "run"), *map(str, settings), *opts])
    validate_config(cfg)
    register_datasets(cfg)
    return cfg


def mini_pretraining_parser(name, description, num_images, output_dir):
    """The command line shared by the benchmarks that run an in-process mini pretraining
    (:func:`mini_pretraining_cfg`): ``--config-file``, ``--num-images``, ``--output-dir``, ``--json`` and trailing
    ``KEY VALUE`` overrides; the caller adds its own options."""
    p = argparse.ArgumentParser(prog=f"python -m joindet.benchmarks.{name}", description=description)
    p.add_argument("--config-file", default=MINI_PRETRAIN_CONFIG)
    p.add_argument("--num-images", type=int, default=num_images,
                   help=f"synthetic training images (default {num_images})")
    p.add_argument("--output-dir", default=output_dir)
    p.add_argument("--json", default="", help="write the rows here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p
