"""
Downstream comparisons by config alone, pretrain + fine-tune per table row and seed, tabulated as the
fine-tuned bbox AP mean ± std over the seeds. Two modes, one orchestration:

* **Hyper-parameter ablations** (the supplement's Tabs. 1-3): one config key, one row per value::

    python -m joindet.tools.ablation --param JOINDET.SMOOTH.MOMENTUM --values 0 0.2 0.45 0.7 \\
        --seeds 0 1 2 --pretrain-config configs/mini/pretrain_synth.yaml \\
        --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir output/ablation_momentum

* **Method comparisons** (JoinDet against its baselines): one row per *method*, a named pretraining
  configuration or no pretraining at all, listed in a YAML file (``configs/mini/compare_methods.yaml``)::

    python -m joindet.tools.ablation --methods configs/mini/compare_methods.yaml --seeds 0 1 2 \\
        --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir output/compare_10pct

  The file is a list, in table order, of mappings with the keys ``name`` (required, unique, a folder
  name: letters, digits, ``._+-``), ``pretrain_config`` (required: a config file, or null for a method
  without pretraining), ``pretrain_opts`` (optional KEY VALUE list), ``finetune_config`` (optional;
  default ``--finetune-config``), ``finetune_opts`` (optional), ``default`` (optional, true for at most
  one row: the mini default's) and ``uses_labels`` (optional, true for a diagnostic that reads the labels,
  e.g. the ``gt_boxes`` ceiling; never the default). ``--pretrain-opts`` /
  ``--finetune-opts`` apply to every method, before its own options. Config paths are relative to the
  working directory or to the repository root.

Paired seeds: ``SEED`` sets both trainings of a run, and every row runs on the same seeds, seed by seed
(all rows of the first seed, then of the next), so the table pairs each row with a reference row
(``--reference``; for a comparison, ``detreg`` when it is listed): the mean paired difference of the
metric and its 95% Student-t interval (``paired_difference``), in table.md and as
``"paired_vs_<reference>": {"mean", "std", "ci95_low", "ci95_high", "n"}`` in each row of table.json.
``--jobs N`` trains N runs at a time; each run is claimed (``<run>/.claim``) while it trains, so a second
invocation on the same folder takes other runs and waits for that one. ``--only ROW ...`` runs (or
tabulates) some rows alone.

Each row x seed is one run, in ``<out>/value_<value>/seed_<seed>/`` or ``<out>/method_<name>/seed_<seed>/``:

1. ``train_net.py --config-file <pretrain-config> <pretrain-opts> [<param> <value>] SEED <seed>
   OUTPUT_DIR <run>/pretrain``, output in ``<run>/pretrain.log``; ``<run>/pretrain_done.json``
   marks it finished (with its command, time and machine). A method without pretraining skips this step;
2. ``train_net.py --config-file <finetune-config> <finetune-opts> MODEL.WEIGHTS
   <run>/pretrain/model_final.pth SEED <seed> OUTPUT_DIR <run>/finetune``, output in
   ``<run>/finetune.log``. A method without pretraining passes no MODEL.WEIGHTS: it fine-tunes from its
   fine-tuning config's own MODEL.WEIGHTS (which its ``finetune_opts`` may set);
3. ``<run>/result.json`` (written atomically): the bbox AP of the fine-tuned model on every test
   dataset, the commands and timings, and the machine of each stage (``"machine": {"pretrain",
   "finetune"}``, from ``joindet.utils.machine.machine_info``: the CPU model and torch's CPU capability,
   since runs are not bit-exact across CPUs).

A re-run skips every run whose ``result.json`` exists, and the pretraining of a run whose
``pretrain_done.json`` and checkpoint exist (the tool is resumable after an interruption); a stage
that did not finish continues from its last checkpoint (``train_net.py --resume``: same weights,
optimizer, prior-bank version and data stream as if it had not stopped), or starts again from an empty
folder when it saved none. Runs are found by folder name only:
use a new ``--out-dir`` when the configs or options change. Each training runs in
its own ``python train_net.py`` process (working directory: the repository root), so logging
handlers, dataset registrations and seeds never leak from one run into the next.

Where the AP comes from: every train_net.py run writes its final evaluation to
``OUTPUT_DIR/eval_results.json`` (``joindet.engine.launcher.write_results``: {dataset: {task: {metric:
value}}}, or {task: {metric: value}} when the config has one test dataset, as Detectron2's
``DefaultTrainer.test`` returns it); the tool reads ``<run>/finetune/eval_results.json``
(``read_bbox_results``). When the
fine-tuning evaluates several times (``TEST.EVAL_PERIOD``), that file holds the last evaluation (the
final model). The table uses the fine-tuning config's first ``DATASETS.TEST`` entry; in a comparison
every method's fine-tuning config must have the same one, or the rows would not be comparable.

Any config key works as ``--param``; values are yacs text (``0.45``, ``20``, ``True``,
``"('a',)"``), except that an integer given for a float key is passed as a float (``0`` -> ``0.0``:
yacs refuses an int for a float key). Every configuration (each value's, each method's pretraining and
fine-tuning) is merged and validated in this process before the first training starts, so a bad file,
key or value fails at once with yacs' (or JoinDet's) error, naming the value or method.

Outputs in ``--out-dir``: ``table.md`` (one row per value or method: mean ± sample std (ddof 1) of
AP, AP50, AP75 over the seeds, and n; the first column is the key, or "method"), ``table.json`` (the
same numbers and the per-seed values; JSON files hold a metric Detectron2 could not compute, reported
as NaN, as null) and ``plot.png`` (``--metric`` per row with std error bars; a categorical x axis when
a value is not a number, as for method names). Two diagnostics follow the AP columns when the runs have
them, read from each pretraining's folder into its result.json: the quality of its last prior version
against the hidden boxes (``prior_quality.json``) and what its refreshes cost as a fraction of one of its
training epochs (``refresh_cost``).
"""
import argparse
import ast
import contextlib
import json
import math
import numbers
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from joindet.utils.atomic import write_json_atomic
from joindet.utils.machine import machine_info
from joindet.utils.process import pid_alive

__all__ = [
    "REPO_ROOT",
    "TABLE_METRICS",
    "METHOD_KEYS",
    "TrainingFailed",
    "run_training",
    "read_bbox_results",
    "load_methods",
    "run_ablation",
    "run_comparison",
    "summarize",
    "paired_difference",
    "format_ablation_table",
    "plot_ablation",
    "build_parser",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE_METRICS = ("AP", "AP50", "AP75")
METHOD_KEYS = ("name", "pretrain_config", "pretrain_opts", "finetune_config", "finetune_opts",  # of a methods file
               "default", "uses_labels")
DEFAULT_REFERENCE = "detreg"  # the row a comparison's paired differences are taken against, when it has one
_COCO_BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOEvaluator's bbox keys (+ "AP-<class>")
_RESERVED_KEYS = ("SEED", "OUTPUT_DIR", "MODEL.WEIGHTS")  # set by the tool for every run
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a folder name on any file system, never "." or ".."

# runner(argv, log_file, env) -> the process's output; argv are train_net.py's arguments, run in the
# repository root (paths inside it are given relative to it). The tool uses no more than the files the
# training writes into its OUTPUT_DIR (model_final.pth, eval_results.json).
Runner = Callable[[Sequence[str], Path, Optional[Mapping[str, str]]], str]


class TrainingFailed(RuntimeError):
    """A training failed: its train_net.py process exited with an error, or it did not write its output."""


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


def read_bbox_results(output_dir: Union[str, Path], datasets: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """
    The bbox results of a finished training, from the ``eval_results.json`` that train_net.py writes
    into its OUTPUT_DIR after the final evaluation: {dataset: {task: {metric: value}}}, a metric
    Detectron2 could not compute being NaN. For a single test dataset Detectron2's
    ``DefaultTrainer.test`` returns that dataset's {task: {metric: value}} alone, so that is what the
    file holds when ``datasets`` has one entry; both forms are read.

    Args:
        output_dir: the training's OUTPUT_DIR.
        datasets: the test datasets to return; the first one must be there (it scores the run).

    Returns:
        {dataset: {metric: value}} for each of ``datasets`` that has bbox results.

    Raises:
        TrainingFailed: the file is missing or unreadable, or holds no bbox results for ``datasets[0]``
            (the message names the file).
    """
    path = Path(output_dir) / "eval_results.json"
    if not path.is_file():
        raise TrainingFailed(f"{path} not found: the training wrote no evaluation results")
    try:
        evaluated = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TrainingFailed(f"{path} is not valid JSON: {e}") from e
    if not isinstance(evaluated, Mapping):
        raise TrainingFailed(f"{path} holds {type(evaluated).__name__}, not {{dataset: {{task: {{metric: value}}}}}}")
    per_dataset = evaluated
    if len(datasets) == 1 and datasets[0] not in evaluated:
        per_dataset = {datasets[0]: evaluated}  # the single test dataset's results, unwrapped by Detectron2
    bbox = {name: dict(per_dataset[name]["bbox"]) for name in datasets
            if isinstance(per_dataset.get(name), Mapping) and isinstance(per_dataset[name].get("bbox"), Mapping)}
    if datasets[0] not in bbox:
        raise TrainingFailed(f"{path} holds no bbox results for {datasets[0]} "
                             f"(its top-level keys: {sorted(evaluated)})")
    return bbox


# --------------------------------------------------------------------------- configuration
def _resolve_config(path: str, kind: str = "config file") -> Path:
    """A file path as given (relative to the working directory) or relative to the repository."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return Path(os.path.abspath(candidate))  # as named (a symlinked folder stays named so)
    raise ValueError(f"{kind} {path!r} not found (relative to {os.getcwd()} or {REPO_ROOT})")


def _shown(path) -> str:
    """
    ``path`` as the tool passes it to train_net.py and records it in its JSON files: relative to the
    repository root when it lies inside it (train_net.py runs there, and a committed result stays true in
    any clone), else absolute.
    """
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(REPO_ROOT))
    except ValueError:
        return str(absolute)


def _check_opts(name: str, opts: Sequence[str], reserved: Sequence[str]) -> List[str]:
    """``opts`` as text, checked to be KEY VALUE pairs that set none of the ``reserved`` keys (those the
    tool sets for every run)."""
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise ValueError(f"{name} must be KEY VALUE pairs, got an odd number of items: {opts}")
    clash = [k for k in opts[0::2] if k in reserved]
    if clash:
        raise ValueError(f"{name} must not set {clash}: the tool sets {list(reserved)} for these runs")
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


def _checked_cfg(config_file: Path, opts: Sequence[str], what: str):
    """``_merged_cfg``, with any error (yacs', JoinDet's validation) as a ValueError that starts with ``what``."""
    try:
        return _merged_cfg(config_file, opts)
    except Exception as e:
        raise ValueError(f"{what}: {type(e).__name__}: {e}") from e


def _test_datasets(cfg, config_file: Path, what: str) -> List[str]:
    if not cfg.DATASETS.TEST:
        raise ValueError(f"{what}: the fine-tuning config {config_file} has no DATASETS.TEST: "
                         "nothing to score the runs on")
    return list(cfg.DATASETS.TEST)


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
    """Strict JSON (NaN as null), written atomically."""
    write_json_atomic(path, _json_safe(data), indent=2, sort_keys=True, allow_nan=False)


# --------------------------------------------------------------------------- table rows
@dataclass
class _Row:
    """One row of the table (a value of the ablated key, or a method) and how each of its runs trains."""

    label: str  # the row's entry in the first column: the value, or the method's name
    folder: str  # its runs' folder in out_dir: value_<value> or method_<name>
    pretrain_config: Optional[Path]  # None: no pretraining (the fine-tuning starts from its config's MODEL.WEIGHTS)
    pretrain_opts: Tuple[str, ...]  # in the param mode, ending with "<param> <value>"
    finetune_config: Path
    finetune_opts: Tuple[str, ...]
    test_datasets: Tuple[str, ...]  # the fine-tuning's DATASETS.TEST; the first one scores the run
    record: Dict[str, object] = field(default_factory=dict)  # what result.json says about the row


def _param_rows(param, values, pretrain_config, finetune_config, pretrain_opts, finetune_opts) -> List[_Row]:
    """The param mode's rows, every configuration merged and validated in this process."""
    base = _checked_cfg(pretrain_config, pretrain_opts, f"pretraining config {pretrain_config} with --pretrain-opts")
    texts = []
    for value in values:
        text = _value_text(base, param, value)
        _checked_cfg(pretrain_config, [*pretrain_opts, param, text], f"pretraining config with {param} = {value}")
        texts.append(text)
    finetune = _checked_cfg(finetune_config, finetune_opts,
                            f"fine-tuning config {finetune_config} with --finetune-opts")
    datasets = tuple(_test_datasets(finetune, finetune_config, "--finetune-config"))
    return [
        _Row(label=value, folder=f"value_{_slug(value)}", pretrain_config=pretrain_config,
             pretrain_opts=(*pretrain_opts, param, text), finetune_config=finetune_config,
             finetune_opts=tuple(finetune_opts), test_datasets=datasets,
             record={"param": param, "value": value, "value_text": text})
        for value, text in zip(values, texts)
    ]


def load_methods(path: Union[str, Path]) -> list:
    """
    The methods listed in a YAML file (``yaml.safe_load``), as written: a non-empty list, in table
    order, of mappings with the keys of ``METHOD_KEYS`` (checked by ``run_comparison``). The path is
    relative to the working directory or to the repository root.
    """
    file = _resolve_config(str(path), kind="methods file")
    try:
        methods = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"methods file {file} is not valid YAML: {e}") from e
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"methods file {file} must be a non-empty YAML list of methods (mappings with the keys "
                         f"{list(METHOD_KEYS)}), got {type(methods).__name__}")
    return methods


def _yaml_opts(opts, what: str) -> List[str]:
    """A methods file's KEY VALUE list as yacs text (YAML gives numbers and booleans as such)."""
    if opts is None:
        return []
    if not isinstance(opts, list):
        raise ValueError(f"{what} must be a list [KEY, VALUE, ...], got {opts!r}")
    for item in opts:
        if not isinstance(item, (str, numbers.Real)):  # numbers.Real includes bool
            raise ValueError(f"{what}: {item!r} is neither a key nor a yacs value "
                             "(write tuples and lists as yacs text, e.g. \"(1, 2)\")")
    return [str(item) for item in opts]


def _method_rows(methods: Sequence, source: str, finetune_config: Optional[str],
                 pretrain_opts: Sequence[str], finetune_opts: Sequence[str]) -> List[_Row]:
    """
    The comparison's rows, one per method in order: each method checked (keys, name, options) and its
    configurations merged and validated in this process. Every error starts with ``source`` and names
    the method (by name, or by position when it has none).
    """
    rows: List[_Row] = []
    seen: Dict[str, int] = {}
    for i, spec in enumerate(methods, 1):
        where = f"{source}: method #{i}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping with the keys {list(METHOD_KEYS)}, got {spec!r}")
        name = spec.get("name")
        if name is None:
            raise ValueError(f"{where} has no 'name' (required: the method's row in the table and its run folder)")
        if not isinstance(name, str) or not _METHOD_NAME.fullmatch(name):
            raise ValueError(f"{where}: name {name!r} is not a safe folder name "
                             "(letters, digits and '._+-', starting with a letter or a digit)")
        where = f"{source}: method {name!r}"
        if name in seen:
            raise ValueError(f"{where}: duplicate name (methods #{seen[name]} and #{i})")
        seen[name] = i
        unknown = [key for key in spec if key not in METHOD_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (a method has the keys {list(METHOD_KEYS)})")
        if "pretrain_config" not in spec:
            raise ValueError(f"{where}: 'pretrain_config' is required (a config file, or null for no pretraining)")
        pretrain = spec["pretrain_config"]
        if pretrain is not None and (not isinstance(pretrain, str) or not pretrain):
            raise ValueError(f"{where}: pretrain_config must be a config file or null, got {pretrain!r}")
        own_pretrain_opts = _yaml_opts(spec.get("pretrain_opts"), f"{where}: pretrain_opts")
        if pretrain is None and own_pretrain_opts:
            raise ValueError(f"{where}: pretrain_opts without a pretrain_config (null: nothing is pretrained)")
        finetune = spec.get("finetune_config")
        if finetune is None:
            if finetune_config is None:
                raise ValueError(f"{where}: no finetune_config, and no --finetune-config to default to")
            finetune = finetune_config
        elif not isinstance(finetune, str) or not finetune:
            raise ValueError(f"{where}: finetune_config must be a config file, got {finetune!r}")
        own_finetune_opts = _yaml_opts(spec.get("finetune_opts"), f"{where}: finetune_opts")
        flags = {}
        for key in ("default", "uses_labels"):
            flags[key] = spec.get(key, False)
            if not isinstance(flags[key], bool):
                raise ValueError(f"{where}: {key} must be true or false, got {flags[key]!r}")

        # a method without pretraining keeps its fine-tuning config's MODEL.WEIGHTS, which its options may set
        pretrained = pretrain is not None
        row_pretrain_opts = _check_opts(f"{where}: pretrain_opts", [*pretrain_opts, *own_pretrain_opts], _RESERVED_KEYS)
        row_finetune_opts = _check_opts(f"{where}: finetune_opts", [*finetune_opts, *own_finetune_opts],
                                        _RESERVED_KEYS if pretrained else ("SEED", "OUTPUT_DIR"))
        try:
            pretrain_file = _resolve_config(pretrain) if pretrained else None
            finetune_file = _resolve_config(finetune)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        if pretrained:
            _checked_cfg(pretrain_file, row_pretrain_opts,
                         f"{where}: pretraining config {pretrain_file} with pretrain_opts {row_pretrain_opts}")
        finetune_cfg = _checked_cfg(
            finetune_file, row_finetune_opts,
            f"{where}: fine-tuning config {finetune_file} with finetune_opts {row_finetune_opts}")
        test_datasets = tuple(_test_datasets(finetune_cfg, finetune_file, where))
        rows.append(_Row(
            label=name, folder=f"method_{name}", pretrain_config=pretrain_file,
            pretrain_opts=tuple(row_pretrain_opts) if pretrained else (), finetune_config=finetune_file,
            finetune_opts=tuple(row_finetune_opts), test_datasets=test_datasets,
            record={"param": "method", "value": name, "method": {
                "name": name, "pretrain_config": None if pretrain_file is None else _shown(pretrain_file),
                "pretrain_opts": row_pretrain_opts if pretrained else [], "finetune_config": _shown(finetune_file),
                "finetune_opts": row_finetune_opts, **flags}},
        ))
    defaults = [row.label for row in rows if row.record["method"]["default"]]
    if len(defaults) > 1:
        raise ValueError(f"{source}: more than one method is marked default: {defaults}")
    labelled = [row.label for row in rows if row.record["method"]["default"] and row.record["method"]["uses_labels"]]
    if labelled:
        raise ValueError(f"{source}: method {labelled[0]!r} reads the labels (uses_labels) and cannot be the default")
    scored_on = rows[0].test_datasets[0]
    others = {r.label: r.test_datasets[0] for r in rows if r.test_datasets[0] != scored_on}
    if others:
        raise ValueError(f"{source}: the methods are not scored on the same dataset: {rows[0].label!r} on {scored_on}, "
                         f"but {others}; every fine-tuning config needs the same first DATASETS.TEST entry")
    return rows


# --------------------------------------------------------------------------- orchestration
def _only(rows: List[_Row], only: Optional[Sequence[str]], what: str) -> List[_Row]:
    """The rows named in ``only`` (in table order); None keeps all. An unknown name is an error."""
    if only is None:
        return rows
    only = [str(name) for name in only]
    unknown = [name for name in only if name not in {row.label for row in rows}]
    if unknown or not only:
        raise ValueError(f"--only {only}: not among the {what} {[row.label for row in rows]}")
    return [row for row in rows if row.label in only]


def _check_run_args(seeds, metric, num_gpus, jobs=1) -> List[int]:
    """The arguments common to both modes, checked; returns the seeds as a list."""
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
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    return seeds


def _continue_or_restart(argv: Sequence[str], folder: Path, log: Callable[[str], None], prefix: str) -> List[str]:
    """The arguments of a stage whose output folder is ``folder``: with ``--resume`` when an interrupted
    attempt left a checkpoint there (``last_checkpoint``; the training continues from it, with its prior
    bank version), else the same arguments on an empty folder. Either way no earlier
    ``eval_results.json`` remains to be read."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(folder / "eval_results.json")
    if (folder / "last_checkpoint").is_file():
        log(f"{prefix}: continuing the interrupted attempt in {folder} (--resume)")
        return [*argv[:2], "--resume", *argv[2:]]  # after --config-file FILE, before the KEY VALUE overrides
    shutil.rmtree(folder, ignore_errors=True)  # leftovers of an attempt that saved no checkpoint
    return list(argv)


PRIOR_QUALITY_METRICS = ("AP", "CorLoc")  # of a pretraining's last prior version, shown beside the downstream AP


def _with_prior_quality(run: Path, result: dict) -> dict:
    """``result`` with "prior_quality": the prior quality per version that the pretraining's refresh hook wrote
    (``<run>/pretrain/prior_bank/prior_quality.json``: [[label, metrics], ...], when its config names an
    ``EVAL_DATASET``), if the result lacks it and the file is there (a diagnostic: never what decides)."""
    path = run / "pretrain" / "prior_bank" / "prior_quality.json"
    if "prior_quality" in result or not path.is_file():
        return result
    try:
        quality = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return result
    return {**result, "prior_quality": quality}


# the refresh hook's line per refresh, and Detectron2's training speed, in a pretraining's log.txt
_REFRESH_LINE = re.compile(r"Prior bank version (\d+) at iteration \d+ \([^)]*\): ([0-9.]+) s")
_SPEED_LINE = re.compile(r"Overall training speed: \d+ iterations in \S+ \(([0-9.]+) s / it\)")


def refresh_cost(pretrain_dir: Union[str, Path]) -> Optional[dict]:
    """
    What the prior refreshes of a finished pretraining cost, as a fraction of one of its training epochs.

    Read from ``pretrain_dir``: ``log.txt`` (the refresh hook's "Prior bank version N at iteration I (...): S s"
    per refresh, the last line of a version counting when a resumed run redid it; Detectron2's last "Overall
    training speed ... (T s / it)"), ``config.yaml`` (``SOLVER.IMS_PER_BATCH``) and the bank's version 0 (the
    number of images). Both times come from the same run on the same machine, so the ratio holds under load.

    Returns:
        {"refreshes", "seconds_mean", "seconds_per_iter", "iters_per_epoch", "fraction_of_epoch"} (a run that
        never refreshed: 0 refreshes, fraction 0.0), or None when a file or the training speed is missing.
    """
    from joindet.priors.bank import PriorBank

    pretrain_dir = Path(pretrain_dir)
    try:
        text = (pretrain_dir / "log.txt").read_text(encoding="utf-8", errors="replace")
        batch = int(yaml.safe_load((pretrain_dir / "config.yaml").read_text(encoding="utf-8"))["SOLVER"]["IMS_PER_BATCH"])
        num_images = int(PriorBank(pretrain_dir / "prior_bank").read(0).meta["num_images"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    speeds = _SPEED_LINE.findall(text)
    if not speeds or batch < 1 or num_images < 1:
        return None
    seconds = {int(version): float(s) for version, s in _REFRESH_LINE.findall(text)}
    per_iter, per_epoch = float(speeds[-1]), num_images / batch
    mean = float(np.mean(list(seconds.values()))) if seconds else 0.0
    return {"refreshes": len(seconds), "seconds_mean": mean, "seconds_per_iter": per_iter,
            "iters_per_epoch": per_epoch, "fraction_of_epoch": mean / (per_epoch * per_iter)}


def _with_refresh_cost(run: Path, result: dict) -> dict:
    """``result`` with "refresh_cost" (:func:`refresh_cost` of its pretraining) if it lacks it and the
    pretraining's files are there."""
    if "refresh_cost" in result or not (run / "pretrain").is_dir():
        return result
    cost = refresh_cost(run / "pretrain")
    return result if cost is None else {**result, "refresh_cost": cost}


def _read_result(run: Path) -> dict:
    """A finished run's result.json; one written without the prior quality or the refresh cost gets them
    added (and is rewritten) while the pretraining's folder is still there."""
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    completed = _with_refresh_cost(run, _with_prior_quality(run, result))
    if completed is not result:
        _write_json_atomic(run / "result.json", completed)
    return completed


def _run_one(row: _Row, seed: int, run: Path, prefix: str, launch: Sequence[str], metric: str, dry_run: bool,
             runner: Runner, env: Optional[Mapping[str, str]], log: Callable[[str], None]) -> Optional[dict]:
    """
    One run (row x seed) in the folder ``run``: pretrain unless that finished earlier (or the row has
    no pretraining), fine-tune, read the AP, write result.json. Returns its content (None in a dry run).
    """
    weights = run / "pretrain" / "model_final.pth"
    pretrain_argv, load = None, []
    if row.pretrain_config is not None:
        pretrain_argv = ["--config-file", _shown(row.pretrain_config), *launch, *row.pretrain_opts,
                         "SEED", str(seed), "OUTPUT_DIR", _shown(run / "pretrain")]
        load = ["MODEL.WEIGHTS", _shown(weights)]
    finetune_argv = ["--config-file", _shown(row.finetune_config), *launch, *row.finetune_opts, *load,
                     "SEED", str(seed), "OUTPUT_DIR", _shown(run / "finetune")]
    result_file = run / "result.json"
    if result_file.is_file():
        log(f"{prefix}: finished earlier ({result_file}), skipped")
        return None if dry_run else _read_result(run)
    pretrain_done = pretrain_argv is not None and (run / "pretrain_done.json").is_file() and weights.is_file()
    if dry_run:  # each command as it runs: in the repository root, where its relative paths point
        train = subprocess.list2cmdline([sys.executable, "train_net.py"])
        train = f"cd {subprocess.list2cmdline([str(REPO_ROOT)])} && {train}"
        if pretrain_argv is None:
            log(f"{prefix}: no pretraining")
        elif pretrain_done:
            log(f"{prefix}: pretraining finished earlier")
        else:
            log(f"{prefix}: pretrain: {train} {subprocess.list2cmdline(pretrain_argv)}")
        log(f"{prefix}: fine-tune: {train} {subprocess.list2cmdline(finetune_argv)}")
        return None

    timings = {}
    if pretrain_argv is None:
        log(f"{prefix}: no pretraining")
    elif pretrain_done:
        log(f"{prefix}: pretraining finished earlier")
    else:
        log(f"{prefix}: pretraining (log: {run / 'pretrain.log'})")
        start = time.perf_counter()
        runner(_continue_or_restart(pretrain_argv, run / "pretrain", log, prefix), run / "pretrain.log", env)
        timings["pretrain_s"] = round(time.perf_counter() - start, 3)
        if not weights.is_file():
            raise TrainingFailed(f"pretraining of {prefix} ended without writing {weights} (stopped by SIGTERM? "
                                 f"run the tool again: it continues from the last checkpoint)")
        _write_json_atomic(run / "pretrain_done.json", {"argv": pretrain_argv, **timings, "machine": machine_info()})
    log(f"{prefix}: fine-tuning (log: {run / 'finetune.log'})")
    start = time.perf_counter()
    runner(_continue_or_restart(finetune_argv, run / "finetune", log, prefix), run / "finetune.log", env)
    timings["finetune_s"] = round(time.perf_counter() - start, 3)
    try:
        bbox = read_bbox_results(run / "finetune", row.test_datasets)
    except TrainingFailed as e:
        raise TrainingFailed(f"fine-tuning of {prefix} (log: {run / 'finetune.log'}): {e}") from None
    dataset = row.test_datasets[0]
    machine = {"finetune": machine_info()}
    if pretrain_argv is not None:  # the pretraining's machine, as it recorded it (None: written before it did)
        machine["pretrain"] = json.loads((run / "pretrain_done.json").read_text(encoding="utf-8")).get("machine")
    result = {
        **row.record, "seed": seed, "dataset": dataset, "bbox": bbox[dataset], "bbox_per_dataset": bbox,
        "pretrain_argv": pretrain_argv, "finetune_argv": finetune_argv, "timings": timings, "machine": machine,
    }
    result = _with_refresh_cost(run, _with_prior_quality(run, result))
    _write_json_atomic(result_file, result)
    log(f"{prefix}: {metric} = {bbox[dataset].get(metric)} on {dataset}")
    return result


def _claim(run: Path) -> bool:
    """
    Claim the run folder for this process (``run/.claim``, created exclusively, holding "<host> <pid>"), so
    that two invocations on the same ``--out-dir`` never train the same run. A claim left by a process of
    this host that no longer lives is taken over. Returns False when another live process holds it.
    """
    run.mkdir(parents=True, exist_ok=True)
    path = run / ".claim"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text(encoding="utf-8").split()
            except (OSError, ValueError):
                host, pid = "", "0"
            if f"{host} {pid}" == me:
                return True
            if host == socket.gethostname() and not pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process died
                continue
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        return True
    return False


def _release(run: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run / ".claim").unlink()


def _run_claimed(row: _Row, seed: int, run: Path, prefix: str, launch, metric, dry_run, runner, env, log,
                 poll_s: float) -> Optional[dict]:
    """``_run_one`` under the run's claim; a run another live process holds is waited for (its result read)."""
    if dry_run or (run / "result.json").is_file():
        return _run_one(row, seed, run, prefix, launch, metric, dry_run, runner, env, log)
    announced = False
    while not _claim(run):
        if (run / "result.json").is_file():
            break
        if not announced:
            log(f"{prefix}: another process is running it ({run / '.claim'}); waiting for its result")
            announced = True
        time.sleep(poll_s)
    try:
        return _run_one(row, seed, run, prefix, launch, metric, dry_run, runner, env, log)
    finally:
        _release(run)


def _run_rows(column: str, rows: Sequence[_Row], seeds: Sequence[int], out_dir, metric: str, num_gpus: int,
              dry_run: bool, runner: Runner, env: Optional[Mapping[str, str]], log: Callable[[str], None],
              extra: Optional[Mapping] = None, table_only: bool = False, jobs: int = 1,
              reference: Optional[str] = None, poll_s: float = 30.0) -> Optional[dict]:
    """
    Both modes' orchestration: every row x seed (``_run_one``), seed by seed (all rows of the first seed,
    then of the next: a partial table is paired), ``jobs`` runs at a time, then the table of the first column
    ``column`` (the key, or "method"), with each row's paired difference against the row ``reference``.
    ``extra`` is added to table.json. With ``table_only`` nothing runs: the table holds the finished runs,
    rows without one are left out, and table.json lists the runs still to do under "unfinished".
    """
    out = Path(os.path.abspath(out_dir))  # as named: a symlinked folder inside the repository stays inside it
    launch = ["--num-gpus", str(num_gpus)] if num_gpus > 1 else []
    order = [(row, seed) for seed in seeds for row in rows]
    total = len(order)
    results, unfinished = [], []
    if table_only:
        for i, (row, seed) in enumerate(order, 1):
            result_file = out / row.folder / f"seed_{seed}" / "result.json"
            if result_file.is_file():
                results.append(_read_result(result_file.parent))
            else:
                log(f"[{i}/{total}] {column}={row.label} seed={seed}: not finished (no {result_file})")
                unfinished.append({column: row.label, "seed": seed})
    else:
        if jobs > 1 and "OMP_NUM_THREADS" not in (os.environ if env is None else env):
            env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}

        def task(i, row, seed):
            return _run_claimed(row, seed, out / row.folder / f"seed_{seed}", f"[{i}/{total}] {column}={row.label} "
                                f"seed={seed}", launch, metric, dry_run, runner, env, log, poll_s)

        if jobs == 1 or dry_run:
            outcomes = [task(i, row, seed) for i, (row, seed) in enumerate(order, 1)]
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(task, i, row, seed) for i, (row, seed) in enumerate(order, 1)]
                outcomes = [f.result() for f in futures]  # the first failure is raised (the others finish)
        results = [r for r in outcomes if r is not None]
    if dry_run:
        return None

    labels = [row.label for row in rows]
    if table_only:  # only the rows with a finished run (a full run has one for every row: summarize checks)
        labels = [label for label in labels if any(r["value"] == label for r in results)]
        if not labels:
            raise ValueError(f"no finished run in {out} to tabulate (run without --table-only first)")
    summary = summarize(results, column, labels, metric=metric,
                        reference=reference if reference in labels else None)
    for row_summary in summary["rows"]:
        flags = next(r.record.get("method", {}) for r in rows if r.label == row_summary["value"])
        row_summary.update({key: flags[key] for key in ("default", "uses_labels") if key in flags})
    summary["seeds"] = list(seeds)
    if table_only:
        summary["unfinished"] = unfinished
    summary.update(extra or {})
    summary = _json_safe(summary)
    table = format_ablation_table(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    _write_json_atomic(out / "table.json", summary)
    plot_ablation(summary, str(out / "plot.png"))
    log(f"\nFine-tuned bbox AP on {rows[0].test_datasets[0]}, mean ± std over seeds:\n\n{table}\n")
    log(f"Wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'plot.png'}")
    return summary


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
    table_only: bool = False,
    runner: Runner = run_training,
    env: Optional[Mapping[str, str]] = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    reference: Optional[str] = None,
    only: Optional[Sequence[str]] = None,
    poll_s: float = 30.0,
) -> Optional[dict]:
    """
    Run (or resume) the ablation of one config key and write table.md, table.json and plot.png in ``out_dir``.

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
        table_only: run nothing: tabulate the finished runs (rows with none are left out; table.json lists
            the rest under "unfinished").
        runner: runs one train_net.py (``run_training``; tests inject a fake).
        env: the environment of the processes (None: this process's).
        log: where progress lines go.
        jobs: runs trained at a time (each its own process; with more than one and no OMP_NUM_THREADS in
            the environment, each gets cpu_count // jobs threads). A run is claimed (``run/.claim``) while it
            trains, so a second invocation on the same folder trains other runs and waits for that one.
        reference: the row (a value) every row is paired with seed by seed in the table (None: none).
        only: the rows (values) to run or tabulate; None: all.
        poll_s: seconds between two looks at a run another process holds.

    Returns:
        the summary written to table.json (see ``summarize``), or None for a dry run.

    Raises:
        ValueError: bad arguments, or a configuration that yacs / JoinDet rejects (before any run).
        TrainingFailed: a training failed (finished runs keep their result.json).
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
    seeds = _check_run_args(seeds, metric, num_gpus, jobs)
    pretrain_opts = _check_opts("pretrain_opts", pretrain_opts, (*_RESERVED_KEYS, param))
    finetune_opts = _check_opts("finetune_opts", finetune_opts, (*_RESERVED_KEYS, param))
    rows = _param_rows(param, values, _resolve_config(pretrain_config), _resolve_config(finetune_config),
                       pretrain_opts, finetune_opts)
    rows = _only(rows, only, "values")
    if reference is not None and reference not in values:
        raise ValueError(f"reference {reference!r} is not one of the values {values}")
    return _run_rows(param, rows, seeds, out_dir, metric, num_gpus, dry_run, runner, env, log, table_only=table_only,
                     jobs=jobs, reference=reference, poll_s=poll_s)


def run_comparison(
    methods: Union[str, Path, Sequence[Mapping]],
    seeds: Sequence[int],
    finetune_config: Optional[str],
    out_dir: str,
    pretrain_opts: Sequence[str] = (),
    finetune_opts: Sequence[str] = (),
    metric: str = "AP",
    num_gpus: int = 1,
    dry_run: bool = False,
    table_only: bool = False,
    runner: Runner = run_training,
    env: Optional[Mapping[str, str]] = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    reference: Optional[str] = None,
    only: Optional[Sequence[str]] = None,
    poll_s: float = 30.0,
) -> Optional[dict]:
    """
    Run (or resume) a comparison of methods (one table row each: a pretraining configuration, or no
    pretraining) and write table.md, table.json and plot.png in ``out_dir``. Same runs, resumption
    and outputs as ``run_ablation``, with "method" as the first column.

    Args:
        methods: a methods YAML file (see ``load_methods``), or its content: mappings with the keys
            of ``METHOD_KEYS``, in table order.
        seeds: the seeds (``SEED``) of both trainings of a run (distinct integers).
        finetune_config: the fine-tuning config of the methods that name none (None: every method must).
        out_dir: the comparison folder (runs in ``method_<name>/seed_<seed>/``).
        pretrain_opts: KEY VALUE overrides of every pretraining, before each method's pretrain_opts.
        finetune_opts: KEY VALUE overrides of every fine-tuning, before each method's finetune_opts.
        metric, num_gpus, dry_run, table_only, runner, env, log, jobs, only, poll_s: as in ``run_ablation``
            (``only``: method names).
        reference: the method each row is paired with (default: "detreg" when the methods have it).

    Returns:
        the summary written to table.json (``summarize``'s, param "method", plus "seeds" and the
        resolved "methods"), or None for a dry run.

    Raises:
        ValueError: a bad methods file or argument, or a configuration that yacs / JoinDet rejects
            (before any run; the message names the method).
        TrainingFailed: a training failed (finished runs keep their result.json).
    """
    if isinstance(methods, (str, os.PathLike)):
        source, methods = f"methods file {methods}", load_methods(methods)
    else:
        source, methods = "methods", list(methods)
        if not methods:
            raise ValueError("methods is empty: give at least one method")
    seeds = _check_run_args(seeds, metric, num_gpus, jobs)
    pretrain_opts = _check_opts("pretrain_opts", pretrain_opts, _RESERVED_KEYS)
    finetune_opts = _check_opts("finetune_opts", finetune_opts, _RESERVED_KEYS)
    rows = _method_rows(methods, source, finetune_config, pretrain_opts, finetune_opts)
    names = [row.label for row in rows]
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in names else None
    elif reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the methods {names}")
    rows = _only(rows, only, "methods")
    return _run_rows("method", rows, seeds, out_dir, metric, num_gpus, dry_run, runner, env, log,
                     extra={"methods": [row.record["method"] for row in rows]}, table_only=table_only,
                     jobs=jobs, reference=reference, poll_s=poll_s)


def _mean_std(xs: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (ddof 1; None for a single value); None / NaN values
    (a metric Detectron2 could not compute) make both NaN."""
    arr = np.asarray([np.nan if x is None else x for x in xs], dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None}


def paired_difference(diffs: Sequence[float], confidence: float = 0.95) -> Dict[str, Optional[float]]:
    """
    The mean of paired differences (a method's metric minus the reference's, seed by seed) with its
    two-sided Student-t confidence interval: mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n), sd with ddof 1.

    Returns:
        {"mean", "std", "ci95_low", "ci95_high", "n"}; with one pair the interval is None (no spread to
        estimate); a None / NaN difference makes every number None.
    """
    from scipy import stats

    arr = np.asarray([np.nan if d is None else d for d in diffs], dtype=np.float64)
    n = int(arr.size)
    if n == 0 or not np.all(np.isfinite(arr)):
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None, "n": n}
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None, "n": 1}
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def summarize(results: Sequence[Mapping], param: str, values: Sequence[str], metric: str = "AP",
              reference: Optional[str] = None) -> dict:
    """
    Aggregate finished runs per row (a value of the ablated key, or a method).

    Args:
        results: result.json contents, each with "value" (the row: the key's value, or the method's
            name), "seed" and "bbox" ({metric: float}).
        param: the first column's heading: the ablated key, or "method".
        values: the rows in table order (each must have at least one result).
        metric: the metric of the plot; must be in every result's bbox dict.

        reference: a value (row) to pair the others with, seed by seed (None: no paired differences).

    Returns:
        {"param", "metric", "rows": [{"value", "name", "n", "seeds", "<m>": {"mean", "std"}, "per_seed":
        {"<m>": [...]}} for each value], with m over TABLE_METRICS and ``metric``}; with a ``reference``,
        also "reference" and, in each row, "paired_vs_<reference>": ``paired_difference`` of ``metric`` over
        the seeds both rows finished (the reference's own row: all zeros).
    """
    metrics = list(dict.fromkeys([*TABLE_METRICS, metric]))
    rows = []
    for value in values:
        runs = sorted((r for r in results if r["value"] == value), key=lambda r: r["seed"])
        if not runs:
            raise ValueError(f"no finished run for {param} = {value}")
        row = {"value": value, "name": value, "n": len(runs), "seeds": [r["seed"] for r in runs], "per_seed": {}}
        for m in metrics:
            missing = [r["seed"] for r in runs if m not in r["bbox"]]
            if missing:
                raise ValueError(f"metric {m!r} is not in the bbox results of {param} = {value} "
                                 f"(seeds {missing}); they hold {sorted(runs[0]['bbox'])}")
            per_seed = [None if r["bbox"][m] is None else float(r["bbox"][m]) for r in runs]
            row["per_seed"][m] = per_seed
            row[m] = _mean_std(per_seed)
        rows.append(row)
    for row in rows:  # diagnostics: each pretraining's last prior version, and what its refreshes cost
        runs = sorted((r for r in results if r["value"] == row["value"]), key=lambda r: r["seed"])
        last = [r["prior_quality"][-1] for r in runs if r.get("prior_quality")]
        if last:
            row["prior_quality_last"] = {"versions": sorted({label for label, _ in last}), "n": len(last),
                                         **{m: _mean_std([q.get(m) for _, q in last]) for m in PRIOR_QUALITY_METRICS}}
        costs = [r["refresh_cost"]["fraction_of_epoch"] for r in runs if r.get("refresh_cost")]
        if costs:
            row["refresh_cost"] = {"n": len(costs), **_mean_std(costs)}
    summary = {"param": param, "metric": metric, "rows": rows}
    if reference is not None:
        by_seed = {r["seed"]: r["bbox"][metric] for r in results if r["value"] == reference}
        if not by_seed:
            raise ValueError(f"no finished run for the reference {param} = {reference}")
        for row in rows:
            pairs = [(s, v) for s, v in zip(row["seeds"], row["per_seed"][metric]) if s in by_seed]
            row[f"paired_vs_{reference}"] = paired_difference(
                [None if v is None or by_seed[s] is None else v - by_seed[s] for s, v in pairs])
        summary["reference"] = reference
    return summary


def _cell(stat: Mapping[str, Optional[float]]) -> str:
    if stat["mean"] is None or not math.isfinite(stat["mean"]):
        return "-"
    if stat["std"] is None or not math.isfinite(stat["std"]):
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def format_ablation_table(summary: Mapping) -> str:
    """A Markdown table of ``summarize``'s output: the value (or method), then mean ± std of AP, AP50,
    AP75, then n."""
    from tabulate import tabulate

    reference = summary.get("reference")
    headers = [summary["param"], *TABLE_METRICS, "n"]
    rows = [[_row_label(r), *(_cell(r[m]) for m in TABLE_METRICS), str(r["n"])] for r in summary["rows"]]
    if reference is not None:
        headers.append(f"{summary['metric']} - {reference}, paired [95% CI]")
        for cells, r in zip(rows, summary["rows"]):
            cells.append("-" if r["value"] == reference else _paired_cell(r[f"paired_vs_{reference}"]))
    if any("prior_quality_last" in r for r in summary["rows"]):
        headers.append("priors, last version: AP / CorLoc")
        for cells, r in zip(rows, summary["rows"]):
            q = r.get("prior_quality_last")
            cells.append("-" if q is None else
                         f"{'/'.join(q['versions'])}: {q['AP']['mean']:.1f} / {q['CorLoc']['mean']:.1f}")
    if any("refresh_cost" in r for r in summary["rows"]):
        headers.append("refresh / epoch")
        for cells, r in zip(rows, summary["rows"]):
            cost = r.get("refresh_cost")
            cells.append("-" if cost is None or not cost["mean"] else f"{100 * cost['mean']:.0f}%")
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(headers) - 1))


def _row_label(row: Mapping) -> str:
    """A row's first cell: its value or name, marked when it is the default or reads the labels."""
    marks = [text for key, text in (("default", "default"), ("uses_labels", "reads labels")) if row.get(key)]
    return f"{row['value']} ({', '.join(marks)})" if marks else row["value"]


def _paired_cell(stat: Mapping[str, Optional[float]]) -> str:
    if stat["mean"] is None:
        return "-"
    if stat["ci95_low"] is None:
        return f"{stat['mean']:+.1f} (n {stat['n']})"
    return f"{stat['mean']:+.1f} [{stat['ci95_low']:+.1f}, {stat['ci95_high']:+.1f}] (n {stat['n']})"


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
    ``summary["metric"]`` against the value (or method), mean with sample-std error bars, as PNG
    (matplotlib's Agg canvas). The x axis is numeric when every value is a number, else categorical in
    table order (method names always are).
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
        description="Pretrain + fine-tune for each value of one config key (--param) or each method "
                    "(--methods), and each seed; tabulate the fine-tuned AP.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--param", help="config key set in the pretraining runs, e.g. JOINDET.SMOOTH.MOMENTUM")
    mode.add_argument("--methods", metavar="FILE",
                      help="YAML list of methods to compare (name, pretrain_config or null, pretrain_opts, "
                           "finetune_config, finetune_opts), e.g. configs/mini/compare_methods.yaml")
    parser.add_argument("--values", nargs="+", help="with --param: its values (yacs text, e.g. 0 0.2 0.45 0.7)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--pretrain-config", help="with --param: the yacs pretraining config")
    parser.add_argument("--finetune-config",
                        help="yacs fine-tuning config (its first DATASETS.TEST entry scores the runs); with "
                             "--methods, that of the methods that name none")
    parser.add_argument("--out-dir", required=True, help="the ablation / comparison folder (resumable)")
    parser.add_argument("--pretrain-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="extra overrides of every pretraining")
    parser.add_argument("--finetune-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="extra overrides of every fine-tuning")
    parser.add_argument("--metric", default="AP", help="bbox metric of the plot (default AP)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per training (train_net.py --num-gpus)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at a time, each its own process (default 1; with more and no "
                             "OMP_NUM_THREADS set, each gets cpu_count // jobs threads)")
    parser.add_argument("--reference", metavar="ROW",
                        help="the method (or value) every row is paired with, seed by seed: the table gives the "
                             "mean paired difference and its 95%% Student-t interval (default for --methods: "
                             "detreg when listed)")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        help="run (or tabulate) only these methods (or values)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: write the table of the finished runs (a partial one while others run)")
    return parser


def main(argv: Optional[Sequence[str]] = None, runner: Runner = run_training,
         env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    common = dict(pretrain_opts=args.pretrain_opts, finetune_opts=args.finetune_opts, metric=args.metric,
                  num_gpus=args.num_gpus, dry_run=args.dry_run, table_only=args.table_only, runner=runner, env=env,
                  jobs=args.jobs, reference=args.reference, only=args.only)
    if args.dry_run and args.table_only:
        parser.error("--dry-run and --table-only exclude each other (one lists the commands, one tabulates)")
    if args.methods is not None:
        if args.values is not None:
            parser.error("--values belongs to --param; a comparison's rows are the methods of --methods")
        if args.pretrain_config is not None:
            parser.error("--pretrain-config is not used with --methods: each method names its pretrain_config")
    else:
        missing = [flag for flag, given in (("--values", args.values), ("--pretrain-config", args.pretrain_config),
                                            ("--finetune-config", args.finetune_config)) if given is None]
        if missing:
            parser.error(f"--param needs {' and '.join(missing)}")
    try:
        if args.methods is not None:
            return run_comparison(args.methods, args.seeds, args.finetune_config, args.out_dir, **common)
        return run_ablation(args.param, args.values, args.seeds, args.pretrain_config, args.finetune_config,
                            args.out_dir, **common)
    except ValueError as e:
        parser.error(str(e))
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
