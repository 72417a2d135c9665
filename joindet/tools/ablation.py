"""
Hyper-parameter ablations by config override alone (the supplement's Tabs. 1-3): for each value of
one config key and each seed, pretrain with the key set to the value, fine-tune the result, and
tabulate the fine-tuned bbox AP as mean ± std over the seeds::

    python -m joindet.tools.ablation --param JOINDET.SMOOTH.MOMENTUM --values 0 0.2 0.45 0.7 \\
        --seeds 0 1 2 --pretrain-config configs/mini/pretrain_synth.yaml \\
        --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir output/ablation_momentum

Run ``<out>/value_<value>/seed_<seed>/`` (one per value x seed):

1. ``train_net.py --config-file <pretrain-config> <pretrain-opts> <param> <value> SEED <seed>
   OUTPUT_DIR <run>/pretrain``, output in ``<run>/pretrain.log``; ``<run>/pretrain_done.json``
   marks it finished;
2. ``train_net.py --config-file <finetune-config> <finetune-opts> MODEL.WEIGHTS
   <run>/pretrain/model_final.pth SEED <seed> OUTPUT_DIR <run>/finetune``, output in
   ``<run>/finetune.log``;
3. ``<run>/result.json`` (written atomically): the bbox AP of the fine-tuned model on every test
   dataset, the commands and timings.

A re-run skips every run whose ``result.json`` exists, and the pretraining of a run whose
``pretrain_done.json`` and checkpoint exist (the tool is resumable after an interruption); a stage
that did not finish is started again from an empty folder. Runs are found by folder name only:
use a new ``--out-dir`` when the configs or options change. Each training runs in
its own ``python train_net.py`` process (working directory: the repository root), so logging
handlers, dataset registrations and seeds never leak from one run into the next.

Where the AP comes from: Detectron2's ``DefaultTrainer.test`` logs, for every test dataset,
``Evaluation results for <dataset> in csv format:`` and then ``print_csv_format``'s
``copypaste: Task: bbox`` / ``copypaste: AP,AP50,...`` / ``copypaste: <numbers>`` lines; they are
parsed from the fine-tuning process's output (``parse_copypaste``). When the fine-tuning evaluates
several times (``TEST.EVAL_PERIOD``), the last block of each dataset (the final model) counts. The
table uses the fine-tuning config's first ``DATASETS.TEST`` entry.

Any config key works as ``--param``; values are yacs text (``0.45``, ``20``, ``True``,
``"('a',)"``), except that an integer given for a float key is passed as a float (``0`` -> ``0.0``:
yacs refuses an int for a float key). Every configuration is merged and validated in this process
before the first training starts, so a bad key or value fails at once with yacs' (or JoinDet's)
error.

Outputs in ``--out-dir``: ``table.md`` (one row per value: mean ± sample std (ddof 1) of AP, AP50,
AP75 over the seeds, and n), ``table.json`` (the same numbers and the per-seed values; JSON files
hold a metric Detectron2 could not compute, reported as NaN, as null) and
``plot.png`` (``--metric`` against the value with std error bars; a categorical x axis when a value
is not a number).
"""
import argparse
import ast
import json
import math
import numbers
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "REPO_ROOT",
    "TABLE_METRICS",
    "run_training",
    "parse_copypaste",
    "run_ablation",
    "summarize",
    "format_ablation_table",
    "plot_ablation",
    "build_parser",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE_METRICS = ("AP", "AP50", "AP75")
_COCO_BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOEvaluator's bbox keys (+ "AP-<class>")
_RESERVED_KEYS = ("SEED", "OUTPUT_DIR", "MODEL.WEIGHTS")  # set by the tool for every run
_RESULTS_HEADER = re.compile(r"Evaluation results for (\S+) in csv format:")
_TASK = re.compile(r"copypaste: Task: (\S+)")
_COPYPASTE = re.compile(r"copypaste: (.*?)\s*$")

# runner(argv, log_file, env) -> the process's output; argv are train_net.py's arguments.
Runner = Callable[[Sequence[str], Path, Optional[Mapping[str, str]]], str]


class TrainingFailed(RuntimeError):
    """A train_net.py process exited with an error."""


def run_training(argv: Sequence[str], log_file: Path, env: Optional[Mapping[str, str]] = None) -> str:
    """
    Run ``sys.executable train_net.py *argv`` in the repository root, stdout and stderr into
    ``log_file`` (replaced), and return that output.

    Raises:
        TrainingFailed: the process exited with a non-zero status (the message ends with the
            output's last lines, e.g. yacs' error).
    """
    script = REPO_ROOT / "train_net.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: the ablation tool runs from a checkout of the repository")
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, str(script), *map(str, argv)], cwd=REPO_ROOT,
                              env=None if env is None else dict(env), stdout=f, stderr=subprocess.STDOUT)
    output = log_file.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-25:])
        raise TrainingFailed(f"train_net.py {' '.join(map(str, argv))} exited with status {proc.returncode} "
                             f"(log: {log_file}); last lines:\n{tail}")
    return output


def parse_copypaste(output: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """
    The evaluation results that Detectron2 logged in ``output``.

    Returns:
        {dataset name: {task (e.g. "bbox"): {metric name: value}}}, from the ``Evaluation results
        for <dataset> in csv format:`` blocks; a later block of the same dataset and task replaces
        an earlier one. Values are floats ("nan" becomes NaN).
    """
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    dataset = None
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        header = _RESULTS_HEADER.search(lines[i])
        if header:
            dataset = header.group(1)
            i += 1
            continue
        task = _TASK.search(lines[i])
        if task and dataset is not None and i + 2 < len(lines):
            names, values = _COPYPASTE.search(lines[i + 1]), _COPYPASTE.search(lines[i + 2])
            if names and values:
                keys = names.group(1).split(",")
                numbers_ = values.group(1).split(",")
                if len(keys) == len(numbers_):
                    try:
                        parsed = {k: float(v) for k, v in zip(keys, numbers_)}
                    except ValueError:
                        parsed = None
                    if parsed is not None:
                        results.setdefault(dataset, {})[task.group(1)] = parsed
                        i += 3
                        continue
        i += 1
    return results


# --------------------------------------------------------------------------- configuration
def _resolve_config(path: str) -> Path:
    """A config path as given (relative to the working directory) or relative to the repository."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"config file {path!r} not found (relative to {os.getcwd()} or {REPO_ROOT})")


def _check_opts(name: str, opts: Sequence[str], param: str) -> List[str]:
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise ValueError(f"{name} must be KEY VALUE pairs, got an odd number of items: {opts}")
    keys = opts[0::2]
    clash = [k for k in keys if k in _RESERVED_KEYS or k == param]
    if clash:
        raise ValueError(f"{name} must not set {clash}: the ablation sets {param}, SEED, OUTPUT_DIR "
                         f"(and MODEL.WEIGHTS for fine-tuning) for every run")
    return opts


def _merged_cfg(config_file: Path, opts: Sequence[str]):
    from detectron2.config import get_cfg

    from joindet.config import add_joindet_config, validate_config

    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    validate_config(cfg)
    return cfg


def _value_text(cfg, param: str, value: str) -> str:
    """``value`` as passed to yacs; an integer literal for a float key becomes a float literal."""
    node = cfg
    for part in param.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, float):
        try:
            literal = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(literal, numbers.Integral) and not isinstance(literal, bool):
            return repr(float(literal))
    return value


def _check_configs(param, values, pretrain_config, finetune_config, pretrain_opts, finetune_opts):
    """Merge and validate every configuration in this process; returns (value texts, test datasets)."""
    texts = []
    try:
        base = _merged_cfg(pretrain_config, pretrain_opts)
    except Exception as e:
        raise ValueError(f"pretraining config {pretrain_config} with --pretrain-opts: {type(e).__name__}: {e}") from e
    for value in values:
        text = _value_text(base, param, value)
        try:
            _merged_cfg(pretrain_config, [*pretrain_opts, param, text])
        except Exception as e:
            raise ValueError(f"pretraining config with {param} = {value}: {type(e).__name__}: {e}") from e
        texts.append(text)
    try:
        finetune = _merged_cfg(finetune_config, finetune_opts)
    except Exception as e:
        raise ValueError(f"fine-tuning config {finetune_config} with --finetune-opts: {type(e).__name__}: {e}") from e
    if not finetune.DATASETS.TEST:
        raise ValueError(f"the fine-tuning config {finetune_config} has no DATASETS.TEST: nothing to score the runs on")
    return texts, list(finetune.DATASETS.TEST)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "empty"


def _json_safe(data):
    """``data`` with every NaN / infinite float replaced by None (strict JSON: Detectron2 reports a
    metric it cannot compute, e.g. APl without large objects, as NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    return data


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_json_safe(data), f, indent=2, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- orchestration
def run_ablation(
    param: str,
    values: Sequence[str],
    seeds: Sequence[int],
    pretrain_config: str,
    finetune_config: str,
    out_dir: str,
    pretrain_opts: Sequence[str] = (),
    finetune_opts: Sequence[str] = (),
    metric: str = "AP",
    num_gpus: int = 1,
    dry_run: bool = False,
    runner: Runner = run_training,
    env: Optional[Mapping[str, str]] = None,
    log: Callable[[str], None] = print,
) -> Optional[dict]:
    """
    Run (or resume) the ablation and write table.md, table.json and plot.png in ``out_dir``.

    Args:
        param: the config key, e.g. "JOINDET.SMOOTH.MOMENTUM"; set in the pretraining runs.
        values: its values as yacs text, e.g. ["0", "0.45"] (distinct).
        seeds: the seeds (``SEED``) of both trainings of a run (distinct integers).
        pretrain_config, finetune_config: yacs config files.
        out_dir: the ablation folder (runs in ``value_<value>/seed_<seed>/``).
        pretrain_opts, finetune_opts: extra KEY VALUE overrides of every run.
        metric: the bbox metric plotted (a key of Detectron2's bbox results, e.g. "AP", "AP50").
        num_gpus: ``--num-gpus`` of each train_net.py process.
        dry_run: only log the commands (and which runs are finished); return None.
        runner: runs one train_net.py (``run_training``; tests inject a fake).
        env: the environment of the processes (None: this process's).
        log: where progress lines go.

    Returns:
        the summary written to table.json (see ``summarize``), or None for a dry run.

    Raises:
        ValueError: bad arguments, or a configuration that yacs / JoinDet rejects (before any run).
        TrainingFailed: a training process failed (finished runs keep their result.json).
    """
    if not isinstance(param, str) or not param or param.strip() != param:
        raise ValueError(f"param must be a config key such as JOINDET.SMOOTH.MOMENTUM, got {param!r}")
    if param in _RESERVED_KEYS:
        raise ValueError(f"param {param} is set by the ablation itself for every run; choose another key")
    values = [str(v) for v in values]
    if not values:
        raise ValueError("values is empty: give at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"values must be distinct, got {values}")
    slugs = [_slug(v) for v in values]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"values {values} map to clashing run folder names {slugs}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if not isinstance(metric, str) or not (metric in _COCO_BBOX_METRICS or metric.startswith("AP-")):
        raise ValueError(f"metric must be one of {_COCO_BBOX_METRICS} or 'AP-<class name>', got {metric!r}")
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, numbers.Integral) or num_gpus < 1:
        raise ValueError(f"num_gpus must be an integer >= 1, got {num_gpus!r}")
    pretrain_opts = _check_opts("pretrain_opts", pretrain_opts, param)
    finetune_opts = _check_opts("finetune_opts", finetune_opts, param)
    pretrain_cfg_file = _resolve_config(pretrain_config)
    finetune_cfg_file = _resolve_config(finetune_config)
    texts, test_datasets = _check_configs(param, values, pretrain_cfg_file, finetune_cfg_file,
                                          pretrain_opts, finetune_opts)
    out = Path(out_dir).resolve()
    launch = ["--num-gpus", str(num_gpus)] if num_gpus > 1 else []

    results = []
    total = len(values) * len(seeds)
    n = 0
    for value, text, slug in zip(values, texts, slugs):
        for seed in seeds:
            n += 1
            run = out / f"value_{slug}" / f"seed_{seed}"
            weights = run / "pretrain" / "model_final.pth"
            pretrain_argv = ["--config-file", str(pretrain_cfg_file), *launch, *pretrain_opts, param, text,
                             "SEED", str(seed), "OUTPUT_DIR", str(run / "pretrain")]
            finetune_argv = ["--config-file", str(finetune_cfg_file), *launch, *finetune_opts,
                             "MODEL.WEIGHTS", str(weights), "SEED", str(seed), "OUTPUT_DIR", str(run / "finetune")]
            result_file = run / "result.json"
            prefix = f"[{n}/{total}] {param}={value} seed={seed}"
            if result_file.is_file():
                log(f"{prefix}: finished earlier ({result_file}), skipped")
                if not dry_run:
                    results.append(json.loads(result_file.read_text(encoding="utf-8")))
                continue
            pretrain_done = (run / "pretrain_done.json").is_file() and weights.is_file()
            if dry_run:
                train = [sys.executable, str(REPO_ROOT / "train_net.py")]
                if pretrain_done:
                    log(f"{prefix}: pretraining finished earlier")
                else:
                    log(f"{prefix}: pretrain: {subprocess.list2cmdline(train + pretrain_argv)}")
                log(f"{prefix}: fine-tune: {subprocess.list2cmdline(train + finetune_argv)}")
                continue

            timings = {}
            if pretrain_done:
                log(f"{prefix}: pretraining finished earlier, fine-tuning")
            else:
                log(f"{prefix}: pretraining (log: {run / 'pretrain.log'})")
                shutil.rmtree(run / "pretrain", ignore_errors=True)  # leftovers of an interrupted attempt
                start = time.perf_counter()
                runner(pretrain_argv, run / "pretrain.log", env)
                timings["pretrain_s"] = round(time.perf_counter() - start, 3)
                if not weights.is_file():
                    raise TrainingFailed(f"pretraining of {prefix} ended without writing {weights}")
                _write_json_atomic(run / "pretrain_done.json", {"argv": pretrain_argv, **timings})
            log(f"{prefix}: fine-tuning (log: {run / 'finetune.log'})")
            shutil.rmtree(run / "finetune", ignore_errors=True)
            start = time.perf_counter()
            output = runner(finetune_argv, run / "finetune.log", env)
            timings["finetune_s"] = round(time.perf_counter() - start, 3)
            evaluated = parse_copypaste(output)
            bbox = {name: evaluated[name]["bbox"] for name in test_datasets if "bbox" in evaluated.get(name, {})}
            if test_datasets[0] not in bbox:
                raise TrainingFailed(
                    f"fine-tuning of {prefix} logged no bbox results for {test_datasets[0]} "
                    f"(no 'Evaluation results for {test_datasets[0]} in csv format:' block in {run / 'finetune.log'})"
                )
            result = {
                "param": param, "value": value, "value_text": text, "seed": seed,
                "dataset": test_datasets[0], "bbox": bbox[test_datasets[0]], "bbox_per_dataset": bbox,
                "pretrain_argv": pretrain_argv, "finetune_argv": finetune_argv, "timings": timings,
            }
            _write_json_atomic(result_file, result)
            log(f"{prefix}: {metric} = {bbox[test_datasets[0]].get(metric)} on {test_datasets[0]}")
            results.append(result)
    if dry_run:
        return None

    summary = summarize(results, param, values, metric=metric)
    summary["seeds"] = seeds
    summary = _json_safe(summary)
    table = format_ablation_table(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    _write_json_atomic(out / "table.json", summary)
    plot_ablation(summary, str(out / "plot.png"))
    log(f"\nFine-tuned bbox AP on {test_datasets[0]}, mean ± std over seeds:\n\n{table}\n")
    log(f"Wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'plot.png'}")
    return summary


def _mean_std(xs: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (ddof 1; None for a single value); None / NaN values
    (a metric Detectron2 could not compute) make both NaN."""
    arr = np.asarray([np.nan if x is None else x for x in xs], dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None}


def summarize(results: Sequence[Mapping], param: str, values: Sequence[str], metric: str = "AP") -> dict:
    """
    Aggregate finished runs per value.

    Args:
        results: result.json contents, each with "value", "seed" and "bbox" ({metric: float}).
        param: the ablated key.
        values: the values in table order (each must have at least one result).
        metric: the metric of the plot; must be in every result's bbox dict.

    Returns:
        {"param", "metric", "rows": [{"value", "n", "seeds", "<m>": {"mean", "std"}, "per_seed":
        {"<m>": [...]}} for each value], with m over TABLE_METRICS and ``metric``}.
    """
    metrics = list(dict.fromkeys([*TABLE_METRICS, metric]))
    rows = []
    for value in values:
        runs = sorted((r for r in results if r["value"] == value), key=lambda r: r["seed"])
        if not runs:
            raise ValueError(f"no finished run for {param} = {value}")
        row = {"value": value, "n": len(runs), "seeds": [r["seed"] for r in runs], "per_seed": {}}
        for m in metrics:
            missing = [r["seed"] for r in runs if m not in r["bbox"]]
            if missing:
                raise ValueError(f"metric {m!r} is not in the bbox results of {param} = {value} "
                                 f"(seeds {missing}); they hold {sorted(runs[0]['bbox'])}")
            per_seed = [None if r["bbox"][m] is None else float(r["bbox"][m]) for r in runs]
            row["per_seed"][m] = per_seed
            row[m] = _mean_std(per_seed)
        rows.append(row)
    return {"param": param, "metric": metric, "rows": rows}


def _cell(stat: Mapping[str, Optional[float]]) -> str:
    if stat["mean"] is None or not math.isfinite(stat["mean"]):
        return "-"
    if stat["std"] is None or not math.isfinite(stat["std"]):
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def format_ablation_table(summary: Mapping) -> str:
    """A Markdown table of ``summarize``'s output: the value, then mean ± std of AP, AP50, AP75, then n."""
    from tabulate import tabulate

    rows = [[r["value"], *(_cell(r[m]) for m in TABLE_METRICS), str(r["n"])] for r in summary["rows"]]
    return tabulate(rows, headers=[summary["param"], *TABLE_METRICS, "n"], tablefmt="pipe", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(TABLE_METRICS) + 1))


def _as_number(text: str) -> Optional[float]:
    try:
        literal = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(literal, bool) or not isinstance(literal, numbers.Real):
        return None
    return float(literal)


def plot_ablation(summary: Mapping, path: str) -> str:
    """
    ``summary["metric"]`` against the value, mean with sample-std error bars, as PNG (matplotlib's
    Agg canvas). The x axis is numeric when every value is a number, else categorical in table order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric, rows = summary["metric"], summary["rows"]
    numeric = [_as_number(r["value"]) for r in rows]
    categorical = any(x is None for x in numeric) or len(set(numeric)) != len(numeric)
    x = np.arange(len(rows), dtype=np.float64) if categorical else np.asarray(numeric)
    order = np.argsort(x, kind="mergesort")
    means = np.asarray([np.nan if r[metric]["mean"] is None else r[metric]["mean"] for r in rows], dtype=np.float64)
    stds = np.asarray([r[metric]["std"] or 0.0 for r in rows], dtype=np.float64)

    fig = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(rows)), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # categories are not joined by a line; numeric values are, in increasing order
    ax.errorbar(x[order], means[order], yerr=stds[order], marker="o", capsize=4,
                linestyle="none" if categorical else "-")
    ax.set_xticks(x)
    ax.set_xticklabels([r["value"] for r in rows])
    if categorical:
        ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xlabel(summary["param"])
    ax.set_ylabel(f"bbox {metric}")
    counts = sorted({r["n"] for r in rows})
    ax.set_title(f"mean ± std over seeds (n = {'/'.join(map(str, counts))})")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.ablation",
        description="Pretrain + fine-tune for each value of one config key and each seed; tabulate the AP.",
    )
    parser.add_argument("--param", required=True,
                        help="config key set in the pretraining runs, e.g. JOINDET.SMOOTH.MOMENTUM")
    parser.add_argument("--values", nargs="+", required=True, help="its values (yacs text, e.g. 0 0.2 0.45 0.7)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--pretrain-config", required=True, help="yacs pretraining config")
    parser.add_argument("--finetune-config", required=True,
                        help="yacs fine-tuning config (its first DATASETS.TEST entry scores the runs)")
    parser.add_argument("--out-dir", required=True, help="the ablation folder (resumable)")
    parser.add_argument("--pretrain-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="extra pretraining overrides")
    parser.add_argument("--finetune-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="extra fine-tuning overrides")
    parser.add_argument("--metric", default="AP", help="bbox metric of the plot (default AP)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per training (train_net.py --num-gpus)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None, runner: Runner = run_training,
         env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_ablation(
            args.param, args.values, args.seeds, args.pretrain_config, args.finetune_config, args.out_dir,
            pretrain_opts=args.pretrain_opts, finetune_opts=args.finetune_opts, metric=args.metric,
            num_gpus=args.num_gpus, dry_run=args.dry_run, runner=runner, env=env,
        )
    except ValueError as e:
        parser.error(str(e))
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
