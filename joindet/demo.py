"""The main job on the built-in default, on the CPU: ``python -m joindet.demo`` (``make demo``).

1. JoinDet pretraining of the mini Deformable DETR (frozen ImageNet Lite0 backbone) on the synthetic
   images, without their labels (configs/mini/pretrain_synth.yaml with its refresh, printed at the start;
   ``--paper`` the paper's refresh instead, ``--generator`` another refresh generator), then the quality of
   every prior version against the hidden boxes, and a figure of the priors of every version on three images;
2. fine-tuning of the pretrained detector on 10% of the synthetic labels
   (configs/mini/finetune_synth_10pct.yaml);
3. evaluation on the synthetic val split: the COCO-style AP table.
``--baseline`` also fine-tunes the same way without detector pretraining, for comparison.

The configs are the package's own (``joindet.model_zoo``), so the demo runs from any folder of an
installed joindet; its outputs go to ``--output-dir`` (default ``output/demo``, relative to the working
directory). The console shows what will run, one progress line per stage and the summary; each stage
runs in its own process, whose whole output goes to ``<stage>/console.txt`` (Detectron2's log:
``<stage>/log.txt``).
"""
import argparse
import collections
import contextlib
import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .evaluation.prior_quality import format_prior_quality_table
from .model_zoo import config_root
from .utils.progress import format_seconds

__all__ = ["main"]


CONFIG_DIR = config_root()  # the configs shipped in the package (joindet.model_zoo), in a checkout or installed
PRETRAIN_CONFIG = "mini/pretrain_synth.yaml"
FINETUNE_CONFIG = "mini/finetune_synth_10pct.yaml"
# the paper's refresh: NCut on the encoder output, the Box Smooth Module as published (no Soft-NMS), every
# prior an object (objectness target 1)
PAPER_OPTS = ["JOINDET.REFRESH.GENERATOR", "ncut_encoder", "JOINDET.SMOOTH.SOFT_NMS_SIGMA", "0.0",
              "JOINDET.PRIORS.OBJECTNESS_TARGET", "one"]
# what each refresh generator (JOINDET.REFRESH.GENERATOR, joindet.priors.refresh) makes the new priors from
GENERATORS = {
    "ncut_encoder": "the paper's: NCut on the detector's encoder output",
    "detector": "the detector's own class-agnostic detections",
    "detector_ncut": "the detector's detections re-scored by its NCut attention map",
    "rescore": "the precedent boxes, re-scored by the detector being trained",
    "rescore_ncut": "the precedent boxes and the encoder's NCut regions, re-scored by the detector being trained",
    "rescore_online": "the precedent boxes, re-scored from the training steps",
}
# wall time of each stage with the default configs, measured on 2 CPU cores (README, "The demo")
REFERENCE_MINUTES = {"pretrain": 18.3, "finetune": 10.9, "baseline": 10.9}
FIGURE_IMAGES = 3  # training images in the prior-evolution figure


def _config(name, config_dir):
    path = Path(config_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found: --config-dir must hold {name} (default: the configs "
                                f"installed with joindet, {CONFIG_DIR})")
    return str(path)


def _merged_cfg(config_file, opts):
    """The yacs cfg a stage will run (the file and the overrides, JoinDet's keys added; not validated, the
    stage does that), to describe it before it starts."""
    from detectron2.config import get_cfg

    from .config import add_joindet_config

    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([str(o) for o in opts])
    return cfg


# --------------------------------------------------------------------------- one stage, one progress line
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DURATION = r"(?:\d+ days?, )?\d+:\d\d:\d\d"
_ITER = re.compile(rf"\beta: ({_DURATION})\s+iter: (\d+)")  # Detectron2's CommonMetricPrinter
_PASS = re.compile(  # joindet.utils.progress.log_progress
    rf"\]: (?P<what>[^\]]+?): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\).*ETA (?P<eta>{_DURATION})")
_INFERENCE = re.compile(rf"Inference done (\d+)/(\d+)\..*ETA=({_DURATION})")
_CONFIG_SAVED = re.compile(r"Full config saved to (.+?)\s*$")
_START = re.compile(r"Starting training from iteration (\d+)")
_NEW_VERSION = re.compile(r"Prior bank version (\d+) at iteration")
_VERSION0 = re.compile(r"computing version 0 of")


def _seconds(duration):
    """Seconds of ``H:MM:SS`` (``N day(s), H:MM:SS``)."""
    days = 0
    if "day" in duration:
        head, duration = duration.split(", ")
        days = int(head.split()[0])
    h, m, s = (int(x) for x in duration.split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


class StageProgress:
    """One stage's progress line, from the stage's console output (Detectron2's and JoinDet's log lines).

    ``feed(line)`` takes each output line; ``line(now)`` is the progress line: iterations done of
    ``SOLVER.MAX_ITER`` (read from the ``config.yaml`` the stage saves), what runs besides training (prior
    generation, a refresh, the evaluation: with that pass's ETA) and the stage's ETA: the remaining iterations
    at the wall-clock rate measured so far (refreshes included), then the evaluation's."""

    def __init__(self, index, count, name, start=None):
        self.label = f"[{index}/{count}] {name:<8}"
        self.start = time.perf_counter() if start is None else start
        self.max_iter = None
        self.iter = None  # iterations done
        self.first = None  # (time, iterations done) at the first iteration line
        self.eta_at = None  # (time, the stage's ETA in seconds then)
        self.phase = "starting"  # what runs besides training ("" while training)
        self.phase_eta_at = None  # (time, the phase's ETA in seconds then)
        self.versions = 0  # prior versions published

    def _set_phase(self, phase, eta_at=None):
        self.phase, self.phase_eta_at = phase, eta_at

    def feed(self, text, now=None):
        now = time.perf_counter() if now is None else now
        text = _ANSI.sub("", text.rstrip("\n"))
        m = _CONFIG_SAVED.search(text)
        if m:
            self.max_iter = _max_iter(m.group(1))
            self._set_phase("building the model")
        elif _VERSION0.search(text):
            self._set_phase("prior version 0")
        elif _NEW_VERSION.search(text):
            self.versions = int(_NEW_VERSION.search(text).group(1)) + 1
            self._set_phase("")
        elif "version 0 (" in text and " images in " in text:  # version 0 published
            self.versions = max(self.versions, 1)
            self._set_phase("")
        elif _START.search(text):
            self.iter = int(_START.search(text).group(1))
            self._set_phase("")
        elif _ITER.search(text):
            m = _ITER.search(text)
            done = int(m.group(2)) + 1
            self.iter = done
            if self.first is None:
                self.first = (now, done)
            self._set_phase("")
            if self.max_iter:
                t0, i0 = self.first
                rate = (done - i0) / (now - t0) if done > i0 and now > t0 else 0.0
                self.eta_at = (now, (self.max_iter - done) / rate if rate > 0 else _seconds(m.group(1)))
        elif _INFERENCE.search(text):
            m = _INFERENCE.search(text)
            self._set_phase(f"evaluating {m.group(1)}/{m.group(2)} images")
            self.eta_at = (now, _seconds(m.group(3)))
        elif "Start inference on" in text:
            self._set_phase("evaluating")
        elif _PASS.search(text):
            m = _PASS.search(text)
            what = m.group("what").strip()
            if self.iter:  # during training: a refresh makes the next version
                what = f"refresh v{self.versions}: {what}"
            elif self.phase.startswith("prior version 0"):
                what = f"prior version 0: {what}"
            self._set_phase(f"{what} {m.group('done')}/{m.group('total')} {m.group('unit')}",
                            (now, _seconds(m.group("eta"))))

    @staticmethod
    def _left(at, now):
        return None if at is None else max(0.0, at[1] - (now - at[0]))

    def fraction(self):
        return self.iter / self.max_iter if self.iter is not None and self.max_iter else 0.0

    def line(self, now=None):
        now = time.perf_counter() if now is None else now
        parts = []
        if self.iter is not None and self.max_iter:
            parts.append(f"iter {self.iter}/{self.max_iter} ({100 * self.fraction():.0f}%)")
        if self.phase:
            phase_eta = self._left(self.phase_eta_at, now)
            parts.append(self.phase + (f" (ETA {format_seconds(phase_eta)})" if phase_eta is not None else ""))
        parts.append(f"elapsed {format_seconds(now - self.start)}")
        eta = self._left(self.eta_at, now)
        parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA -")
        return f"{self.label} " + " | ".join(parts)


def _max_iter(config_yaml):
    """``SOLVER.MAX_ITER`` of a stage's saved config (its epochs already turned into iterations)."""
    try:
        import yaml

        with open(config_yaml) as f:
            return int(yaml.safe_load(f)["SOLVER"]["MAX_ITER"])
    except Exception:  # noqa: BLE001  (the line only loses its iteration count)
        return None


class _Console:
    """Where progress lines go: on a terminal one line rewritten in place; elsewhere (a log file, a pipe) a
    line at each quarter of the iterations and the final one."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quarter = 0
        self.shown = ""

    def update(self, progress, now=None):
        text = progress.line(now)
        if self.tty:
            text = text[:shutil.get_terminal_size((120, 20)).columns - 1]
            if text != self.shown:
                self.stream.write("\r" + text + "\x1b[K")
                self.stream.flush()
                self.shown = text
            return
        quarter = int(4 * progress.fraction())
        if 0 < quarter < 4 and quarter > self.quarter:
            self.quarter = quarter
            print(text, file=self.stream, flush=True)

    def done(self, text):
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K\n")
        else:
            print(text, file=self.stream)
        self.stream.flush()
        self.quarter, self.shown = 0, ""


def _read_lines(stream, lines):
    for text in stream:
        lines.put(text)
    lines.put(None)


def _stage_command(config_file, opts, output_dir):
    """The stage's process: ``train_net.py``'s launcher (the installed module, any working directory)."""
    return [sys.executable, "-m", "joindet.engine.launcher", "--config-file", str(config_file),
            "OUTPUT_DIR", str(output_dir)] + [str(o) for o in opts]


def _run(config_file, opts, output_dir, stage=("1/1", "stage"), console=None):
    """One training stage in its own process (its own logging and dataset registrations). Its output goes
    to ``OUTPUT_DIR/console.txt`` (Detectron2 writes its log to ``OUTPUT_DIR/log.txt``), the console gets one
    progress line; returns the stage's evaluation results. A failed stage prints the end of its output and
    raises ``subprocess.CalledProcessError``."""
    console = console or _Console()
    index, name = stage
    i, n = (int(x) for x in index.split("/"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = _stage_command(config_file, opts, output_dir)
    progress = StageProgress(i, n, name)
    tail = collections.deque(maxlen=30)
    lines = queue.Queue()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # line by line, for the progress line
    with open(out / "console.txt", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        try:
            while True:
                try:
                    text = lines.get(timeout=1.0)
                except queue.Empty:
                    console.update(progress)
                    continue
                if text is None:
                    break
                log.write(text)
                tail.append(text.rstrip("\n"))
                progress.feed(text)
                console.update(progress)
            returncode = proc.wait()
        except BaseException:  # Ctrl-C: stop the stage too
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    elapsed = format_seconds(time.perf_counter() - progress.start)
    if returncode != 0:
        console.done(f"{progress.label} FAILED (exit status {returncode}) after {elapsed}; the end of its output:")
        print("\n".join("    " + t for t in tail), file=console.stream)
        print(f"Its whole output: {out / 'console.txt'}; Detectron2's log: {out / 'log.txt'}", file=console.stream,
              flush=True)
        raise subprocess.CalledProcessError(returncode, cmd)
    with open(out / "eval_results.json") as f:
        results = json.load(f)
    what = [f"{progress.iter} iterations"] if progress.iter is not None else []
    if progress.versions:
        what.append(f"prior versions v0-v{progress.versions - 1}" if progress.versions > 1 else "prior version v0")
    if results:
        what.append(f"AP {_bbox(results)['AP']:.1f}")
    console.done(f"{progress.label} done in {elapsed}" + (f": {', '.join(what)}" if what else ""))
    return results


# --------------------------------------------------------------------------- reports
def _bbox(results):
    return results["bbox"] if "bbox" in results else next(iter(results.values()))["bbox"]


def _ap_table(results):
    """Markdown table of the bbox AP in ``results`` (Detectron2 returns {"bbox": ...} for one test set,
    {dataset: {"bbox": ...}} for several: the first is shown)."""
    bbox = _bbox(results)
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{bbox[k]:.1f}" for k in keys) + " |")


def _prior_quality(bank_root):
    """The quality of every prior version, as the refresh hook measured it during pretraining."""
    with open(Path(bank_root) / "prior_quality.json") as f:
        rows = [(label, metrics) for label, metrics in json.load(f)]
    return format_prior_quality_table(rows), rows


def _figure(cfg, bank_root, path, num_images=FIGURE_IMAGES):
    """The priors of every bank version (and selective search's) on the first ``num_images`` training
    images (``joindet.tools.prior_evolution``), written to ``path``. Returns ``path``."""
    from .priors.bank import PriorBank

    bank = PriorBank(bank_root)
    versions = bank.versions()
    if not versions:
        raise FileNotFoundError(f"no complete prior version in {bank_root}")
    import cv2
    import numpy as np
    from detectron2.data import DatasetCatalog

    from .data.datasets import register_datasets
    from .tools.prior_evolution import _choose_images, draw_prior_grid

    with contextlib.redirect_stdout(io.StringIO()):
        register_datasets(cfg)
        dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
        ids = _choose_images(dicts, bank, versions, num_images)
        grid = draw_prior_grid(bank, dicts, ids, versions, panel_size=192)
    if not cv2.imwrite(str(path), np.ascontiguousarray(grid[:, :, ::-1])):
        raise OSError(f"cannot write {path}")
    return str(path)


def _describe(name, cfg, config_name):
    """A stage's line of the header: its config, schedule and data."""
    sv = cfg.SOLVER
    schedule = f"{sv.EPOCHS:g} epochs" if sv.EPOCHS > 0 else f"{sv.MAX_ITER} iterations"
    text = f"  {name:<9} {config_name}: {schedule} at batch {sv.IMS_PER_BATCH} on {', '.join(cfg.DATASETS.TRAIN)}"
    if cfg.MODEL.META_ARCHITECTURE == "JoinDet":
        text += f" (labels unused), prior version 0 by {cfg.JOINDET.PRIORS.INIT_SOURCE}"
    else:
        text += ", from the pretrained detector" if cfg.MODEL.WEIGHTS else ", without detector pretraining"
        if cfg.DATASETS.TEST:
            text += f"; AP on {', '.join(cfg.DATASETS.TEST)}"
    return text


def _refresh_line(cfg, source):
    """``refresh: <generator> (<what it is>; <who set it>), <when>, <the merge>``, from the pretraining cfg."""
    j = cfg.JOINDET
    generator = j.REFRESH.GENERATOR
    what = GENERATORS.get(generator, "")
    if generator.startswith("rescore"):
        what += f" ({j.REFRESH.RESCORE_QUALITY})"
    when = (f"every {j.UPDATE_PERIOD_ITERS} iterations" if j.UPDATE_PERIOD_ITERS > 0
            else f"every {j.UPDATE_PERIOD:g} epochs" if j.UPDATE_PERIOD > 0 else "never")
    paper = "" if generator == "ncut_encoder" else ", the paper's with --paper"
    why = ""
    if source == PRETRAIN_CONFIG and generator == "ncut_encoder":  # the mini default, and why it is
        why = (" -- the default: the paper's refresh, ahead of DETReg downstream by more than the noise on shapes, "
               "level with it on clutter; no refresh has yet beaten DETReg on both (docs/experiments/downstream.md)")
    return (f"refresh: {generator} ({what}; set by {source}{paper}), {when}, "
            f"Soft-NMS sigma {j.SMOOTH.SOFT_NMS_SIGMA:g}{why}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo", help="where checkpoints, logs and the bank go")
    parser.add_argument("--config-dir", default=str(CONFIG_DIR),
                        help="the folder of the configs (default: the ones installed with joindet)")
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
    pretrain_dir = out / "pretrain"
    timings, summary = {}, {}
    generator_opts, source = [], PRETRAIN_CONFIG
    if args.paper:
        generator_opts, source = PAPER_OPTS, "--paper"
    elif args.generator:
        generator_opts, source = ["JOINDET.REFRESH.GENERATOR", args.generator], "--generator"
    if "JOINDET.REFRESH.GENERATOR" in args.pretrain_opts:
        source = "--pretrain-opts"
    pretrain_file = _config(PRETRAIN_CONFIG, args.config_dir)
    finetune_file = _config(FINETUNE_CONFIG, args.config_dir)
    pretrain_opts = generator_opts + args.pretrain_opts
    finetune_opts = ["MODEL.WEIGHTS", pretrain_dir / "model_final.pth"] + args.finetune_opts
    baseline_opts = ["MODEL.WEIGHTS", ""] + args.finetune_opts
    stages = [("pretrain", PRETRAIN_CONFIG, pretrain_file, pretrain_opts, pretrain_dir),
              ("finetune", FINETUNE_CONFIG, finetune_file, finetune_opts, out / "finetune")]
    if args.baseline:
        stages.append(("baseline", FINETUNE_CONFIG, finetune_file, baseline_opts, out / "baseline"))
    try:
        cfgs = {name: _merged_cfg(file, opts) for name, _, file, opts, _ in stages}
    except Exception as e:  # noqa: BLE001  (a wrong KEY VALUE override, before anything runs)
        parser.error(f"the configs with the given overrides do not load: {e}")

    # header: what will run, and about how long
    print(f"JoinDet demo ({cfgs['pretrain'].MODEL.DEVICE}): pretraining on unlabelled synthetic images, then "
          f"fine-tuning on 10% of the labels{' (and without pretraining)' if args.baseline else ''}")
    for name, config_name, _, _, _ in stages:
        print(_describe(name, cfgs[name], config_name))
    print(_refresh_line(cfgs["pretrain"], source))
    reference = sum(REFERENCE_MINUTES[name] for name, *_ in stages)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.pretrain_opts or args.finetune_opts:
        print(f"time: about {reference:.0f} min with the default settings on 2 CPU cores (yours override them; "
              f"this machine: {cores} cores); each stage's line below shows its ETA")
    else:
        print(f"time: about {reference:.0f} min (measured on 2 CPU cores; this machine: {cores}); each stage's "
              "line below shows its ETA")
    print(f"output: {out}/ (each stage's full log: <stage>/log.txt, its console output: <stage>/console.txt)",
          flush=True)

    console = _Console()
    count = len(stages)
    for index, (name, _, file, opts, stage_dir) in enumerate(stages, 1):
        start = time.perf_counter()
        results = _run(file, opts, stage_dir, stage=(f"{index}/{count}", name), console=console)
        if name == "pretrain":
            figure, figure_error = None, ""
            bank_root = Path(cfgs[name].JOINDET.PRIORS.BANK_DIR or pretrain_dir / "prior_bank")
            try:
                table, rows = _prior_quality(bank_root)
                summary["prior_quality"] = {label: m for label, m in rows}
            except FileNotFoundError:
                table = "(not measured: JOINDET.PRIORS.EVAL_DATASET is empty)"
            try:
                figure = _figure(cfgs[name], bank_root, out / "prior_evolution.png")
            except Exception as e:  # noqa: BLE001  (the figure is an extra: the demo goes on without it)
                figure_error = f"{type(e).__name__}: {e}"
        else:
            summary[name] = results
        timings[f"{name}_s"] = time.perf_counter() - start

    summary["timings"] = timings
    files = {"figure": figure, "pretrained_model": str(pretrain_dir / "model_final.pth"),
             "model": str(out / "finetune" / "model_final.pth"), "prior_bank": str(bank_root),
             "logs": {name: str(stage_dir / "log.txt") for name, _, _, _, stage_dir in stages}}
    summary["files"] = files
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)

    total = sum(timings.values())
    print(f"\n=== JoinDet demo (synthetic set, {cfgs['pretrain'].MODEL.DEVICE}): done in {total / 60:.1f} min ===")
    print(f"\nPrior quality per bank version (class-agnostic, against the unused train boxes):\n{table}")
    print(f"\nFine-tuned on 10% of the labels, {', '.join(cfgs['finetune'].DATASETS.TEST)} bbox AP:\n"
          f"{_ap_table(summary['finetune'])}")
    if args.baseline:
        print(f"\nSame fine-tuning without detector pretraining:\n{_ap_table(summary['baseline'])}")
    print("\nWall time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"Figure:     {figure} (the priors of every version on {FIGURE_IMAGES} training images)" if figure
          else f"Figure:     not drawn ({figure_error})")
    print(f"Model:      {files['model']} (fine-tuned); pretrained: {files['pretrained_model']}")
    print(f"Prior bank: {files['prior_bank']}")
    print("Logs:       " + ", ".join(files["logs"].values()) + " (Detectron2's full logs; console.txt beside each)")
    print(f"Summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
