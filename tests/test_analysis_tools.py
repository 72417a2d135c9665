"""Tests of the analysis tools: the prior-evolution figure (one panel per bank version + selective
search, per image) with its quality plot, and the resumable ablation runner in both modes, a config
key's values and a comparison of methods (orchestration with a fake training runner, the shipped
comparison's configs, plus one real tiny pretrain + fine-tune run through ``train_net.py``)."""
import json
import os
import socket
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from joindet.data.synthetic import register_synthetic
from joindet.engine.launcher import write_results
from joindet.priors.bank import PriorBank
from joindet.tools import ablation, prior_evolution
from joindet.tools.prior_evolution import LABEL_WIDTH, TITLE_HEIGHT, draw_prior_grid
from joindet.utils.machine import cpu_fields, machine_info

from conftest import REPO_ROOT, TINY_DATA_OPTS, TINY_IMAGE_SIZE, TINY_MODEL_OPTS

SYNTH_ARGS = ["--synthetic-num-train", "8", "--synthetic-num-val", "4",
              "--synthetic-image-size", str(TINY_IMAGE_SIZE)]
PANEL = 128  # 64 px images drawn at scale 2
BOX_V0 = [8.0, 8.0, 40.0, 40.0]  # the single v0 prior of the first image


# --------------------------------------------------------------------------- prior evolution figure
def _gt_xyxy(record):
    return np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]],
                    dtype=np.float32).reshape(-1, 4)


@pytest.fixture
def tiny_bank(synthetic_cache, tmp_path):
    """A bank of three versions for the first two synth_train images (64 px):
    v0: one box (image 1: BOX_V0); v1: the ground-truth boxes (scores 1, 0.9, ...) plus a low-score
    distractor; v2: no priors at all. Returns (bank, the two labelled dicts)."""
    register_synthetic(num_train=8, num_val=4, image_size=TINY_IMAGE_SIZE)  # the session's settings
    dicts = sorted(DatasetCatalog.get("synth_train"), key=lambda d: d["image_id"])[:2]
    ids = [d["image_id"] for d in dicts]
    bank = PriorBank(tmp_path / "bank")
    bank.write_version(0, ids, [np.array([BOX_V0]), np.array([[20.0, 4.0, 60.0, 30.0]])], [np.ones(1), np.ones(1)])
    v1_boxes, v1_scores = [], []
    for d in dicts:
        gt = _gt_xyxy(d)
        v1_boxes.append(np.concatenate([gt, [[0.0, 0.0, 6.0, 6.0]]]))
        v1_scores.append(np.concatenate([1.0 - 0.1 * np.arange(len(gt)), [0.01]]))
    bank.write_version(1, ids, v1_boxes, v1_scores)
    bank.write_version(2, ids, [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2)
    return bank, dicts


def _panel(grid, row, col, size=PANEL):
    y, x = TITLE_HEIGHT + row * size, LABEL_WIDTH + col * size
    return grid[y : y + size, x : x + size].astype(np.int16)


def _outline_band(box, scale, width):
    """bool (PANEL, PANEL): pixels within ``width`` of the outline of ``box`` (XYXY image coords) at ``scale``."""
    x1, y1, x2, y2 = (np.asarray(box) * scale).tolist()
    yy, xx = np.mgrid[0:PANEL, 0:PANEL] + 0.5
    inside_outer = (xx >= x1 - width) & (xx <= x2 + width) & (yy >= y1 - width) & (yy <= y2 + width)
    inside_inner = (xx > x1 + width) & (xx < x2 - width) & (yy > y1 + width) & (yy < y2 - width)
    return inside_outer & ~inside_inner


def _changed(a, b):
    return np.abs(a - b).max(axis=2) > 8


def test_grid_layout_boxes_topk_and_titles(tiny_bank):
    bank, dicts = tiny_bank
    ids = [d["image_id"] for d in dicts]
    grid = draw_prior_grid(bank, dicts, ids, [0, 1, 2], topk=1, ss_topk=15, panel_size=PANEL)
    assert grid.dtype == np.uint8
    # 2 rows (images) x 4 columns (v0, v1, v2, selective search) of PANEL-px squares, plus the title / label bands
    assert grid.shape == (TITLE_HEIGHT + 2 * PANEL, LABEL_WIDTH + 4 * PANEL, 3)

    for row, d in enumerate(dicts):
        empty = _panel(grid, row, 2)  # v2 has no priors: the plain image, scaled x2
        image = read_image(d["file_name"], format="RGB")
        plain = cv2.resize(image, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST).astype(np.int16)
        assert np.mean(np.abs(empty - plain)) < 2.0
        # selective search draws boxes: its panel differs from the plain image
        assert _changed(_panel(grid, row, 3), empty).sum() > 100

    empty = _panel(grid, 0, 2)
    # v0 of image 1: one box; every changed pixel is on its outline (x2), and all four sides are drawn
    changed = _changed(_panel(grid, 0, 0), empty)
    assert changed.sum() > 50
    assert not (changed & ~_outline_band(BOX_V0, 2.0, 4)).any()
    x1, y1, x2, y2 = (np.asarray(BOX_V0) * 2).astype(int)
    assert changed[y1 + 10 : y2 - 10, x1 - 3 : x1 + 4].any() and changed[y1 + 10 : y2 - 10, x2 - 4 : x2 + 3].any()
    assert changed[y1 - 3 : y1 + 4, x1 + 10 : x2 - 10].any() and changed[y2 - 4 : y2 + 3, x1 + 10 : x2 - 10].any()
    # v1 with topk=1: only the top-scoring prior (the first ground-truth box) is drawn
    changed = _changed(_panel(grid, 0, 1), empty)
    top = _gt_xyxy(dicts[0])[0]
    assert changed.sum() > 20
    assert not (changed & ~_outline_band(top, 2.0, 4)).any()

    # each column has its title, each row its label (dark text on the white bands)
    for col in range(4):
        band = grid[:TITLE_HEIGHT, LABEL_WIDTH + col * PANEL : LABEL_WIDTH + (col + 1) * PANEL]
        assert (band.max(axis=2) < 128).sum() > 10
    for row in range(2):
        band = grid[TITLE_HEIGHT + row * PANEL : TITLE_HEIGHT + (row + 1) * PANEL, :LABEL_WIDTH]
        assert (band.max(axis=2) < 128).sum() > 10


def test_grid_rejects_bad_input(tiny_bank):
    bank, dicts = tiny_bank
    ids = [d["image_id"] for d in dicts]
    with pytest.raises(ValueError, match="not in the dataset"):
        draw_prior_grid(bank, dicts, [10**6], [0])
    with pytest.raises(ValueError, match=r"version\(s\) \[7\]"):
        draw_prior_grid(bank, dicts, ids, [7])
    with pytest.raises(ValueError, match="topk"):
        draw_prior_grid(bank, dicts, ids, [0], topk=0)


def test_figure_tool_writes_grid_and_quality_plot(tiny_bank, tmp_path, capsys):
    bank, dicts = tiny_bank
    fig, qplot = tmp_path / "figs" / "evolution.png", tmp_path / "figs" / "quality.png"
    info = prior_evolution.main([
        "--bank", str(bank.root), "--dataset", "synth_train_unlabeled", "--num-images", "2",
        "--panel-size", "96", "--out", str(fig), "--quality-plot", str(qplot), *SYNTH_ARGS,
    ])
    written = cv2.imread(str(fig))
    assert written.shape == (TITLE_HEIGHT + 2 * 96, LABEL_WIDTH + 4 * 96, 3) == info["shape"]
    assert info["image_ids"] == [d["image_id"] for d in dicts]  # the first two ids the bank holds
    assert info["columns"] == ["v0", "v1", "v2", "selective search"]
    quality = cv2.imread(str(qplot))
    assert quality is not None and quality.shape[0] > 100 and quality.shape[1] > 100
    # scored against the labelled counterpart (synth_train, 8 images; the bank covers 2): v1 holds
    # the exact boxes of its 2 images, so recall = their share of all boxes, CorLoc = 2 of 8 images
    q = dict(info["quality"])
    every = DatasetCatalog.get("synth_train")
    share = 100.0 * sum(len(d["annotations"]) for d in dicts) / sum(len(d["annotations"]) for d in every)
    assert all(len(d["annotations"]) for d in every) and q["v1"]["missing_images"] == 6
    assert q["v1"]["AR@30"] == pytest.approx(share) and q["v1"]["R50@30"] == pytest.approx(share)
    assert q["v1"]["CorLoc"] == pytest.approx(100.0 * 2 / 8)
    assert q["v2"]["AR@30"] == 0.0 and q["v2"]["R50@30"] == 0.0 and q["v2"]["CorLoc"] == 0.0
    out = capsys.readouterr().out
    assert "2 row(s)" in out and "4 column(s)" in out and "on 'synth_train'" in out
    assert "v1 lacks 6 of the 8 images" in out
    for label in ("| v0", "| v1", "| v2"):
        assert label in out

    with pytest.raises(SystemExit):
        prior_evolution.main(["--bank", str(bank.root), "--dataset", "synth_train", "--versions", "9",
                              "--out", str(fig), *SYNTH_ARGS])
    assert "version(s) [9]" in capsys.readouterr().err


# --------------------------------------------------------------------------- ablation orchestration
PRETRAIN_CONFIG = "configs/mini/pretrain_synth.yaml"
FINETUNE_CONFIG = "configs/mini/finetune_synth_10pct.yaml"
NO_PRETRAIN_FINETUNE_CONFIG = "configs/baselines/mini/no_pretrain_finetune_synth_10pct.yaml"
DETREG_CONFIG = "configs/baselines/mini/detreg_pretrain_synth.yaml"


def _momentum_score(run):
    """The param-mode fake's AP before the seed: 10 x the m_s the run was pretrained with."""
    return 10 * float(json.load(open(os.path.join(run, "pretrain_done.json")))["argv"][-5])


class FakeRunner:
    """
    Records the train_net.py argv of each call and writes what train_net.py would into its
    OUTPUT_DIR: a pretraining (a call whose config is none of ``finetune_config_files``) writes
    model_final.pth; a fine-tuning writes eval_results.json (launcher.write_results) with
    AP = score(run folder) + seed, AP50 = AP + 20, AP75 = AP / 2, and APs NaN: the configs' one test
    dataset synth_val, whose {task: {metric}} Detectron2 returns unwrapped.
    """

    def __init__(self, score=_momentum_score, finetune_config_files=(FINETUNE_CONFIG,)):
        self.calls = []
        self.score = score
        self.finetune_config_files = {str(REPO_ROOT / f) for f in finetune_config_files}

    def __call__(self, argv, log_file, env):
        self.calls.append(list(argv))
        argv = [a for a in argv if a != "--resume"]
        opts = dict(zip(argv[2::2], argv[3::2]))
        out = os.path.join(ablation.REPO_ROOT, opts["OUTPUT_DIR"])  # train_net.py runs in the repository root
        os.makedirs(out, exist_ok=True)
        if os.path.join(ablation.REPO_ROOT, argv[1]) not in self.finetune_config_files:
            open(os.path.join(out, "model_final.pth"), "wb").close()
            return "pretrained\n"
        ap = self.score(os.path.dirname(out)) + int(opts["SEED"])
        bbox = {"AP": ap, "AP50": ap + 20, "AP75": ap / 2, "APs": float("nan"), "APm": 1.0, "APl": 2.0}
        write_results(out, {"bbox": bbox})
        return "fine-tuned\n"


def _ablation_args(out_dir, values=("0", "0.7"), seeds=("0", "1")):
    return ["--param", "JOINDET.SMOOTH.MOMENTUM", "--values", *values, "--seeds", *seeds,
            "--pretrain-config", PRETRAIN_CONFIG, "--finetune-config", FINETUNE_CONFIG, "--out-dir", str(out_dir)]


def test_ablation_orchestration_table_and_resume(tmp_path, capsys):
    out = tmp_path / "abl"
    runner = FakeRunner()
    summary = ablation.main(_ablation_args(out), runner=runner)
    assert len(runner.calls) == 8  # 2 values x 2 seeds x (pretrain + fine-tune)
    pre, fine = runner.calls[0], runner.calls[1]
    assert pre[:2] == ["--config-file", PRETRAIN_CONFIG]
    # an int given for a float key is passed as a float; SEED and OUTPUT_DIR set per run
    run = out / "value_0" / "seed_0"
    assert pre[2:] == ["JOINDET.SMOOTH.MOMENTUM", "0.0", "SEED", "0", "OUTPUT_DIR", str(run / "pretrain")]
    assert fine[2:] == ["MODEL.WEIGHTS", str(run / "pretrain" / "model_final.pth"),
                        "SEED", "0", "OUTPUT_DIR", str(run / "finetune")]

    # AP per value: 10 * value + seed over seeds 0, 1 -> mean 10 * value + 0.5, sample std sqrt(0.5)
    table = json.loads((out / "table.json").read_text())
    assert table == summary
    assert [r["value"] for r in table["rows"]] == ["0", "0.7"] and [r["n"] for r in table["rows"]] == [2, 2]
    for row, value in zip(table["rows"], (0.0, 0.7)):
        assert row["per_seed"]["AP"] == pytest.approx([10 * value, 10 * value + 1])
        assert row["AP"]["mean"] == pytest.approx(10 * value + 0.5, abs=1e-4)
        assert row["AP"]["std"] == pytest.approx(np.sqrt(0.5), abs=1e-4)
        assert row["AP50"]["mean"] == pytest.approx(10 * value + 20.5, abs=1e-4)
        assert row["AP75"]["mean"] == pytest.approx((10 * value + 0.5) / 2, abs=1e-4)
    md = (out / "table.md").read_text().strip().splitlines()
    assert len(md) == 4  # header, separator, one row per value
    assert md[0].split("|")[1].strip() == "JOINDET.SMOOTH.MOMENTUM"
    assert [c.strip() for c in md[3].split("|")[1:-1]] == ["0.7", "7.5 ± 0.7", "27.5 ± 0.7", "3.8 ± 0.4", "2"]
    assert cv2.imread(str(out / "plot.png")) is not None
    result = json.loads((out / "value_0.7" / "seed_1" / "result.json").read_text())
    assert result["bbox"]["AP"] == pytest.approx(8.0) and result["bbox"]["APs"] is None  # NaN -> null
    assert result["param"] == "JOINDET.SMOOTH.MOMENTUM" and result["value_text"] == "0.7"
    # the machine of each stage: the pretraining's as pretrain_done.json recorded it, the fine-tuning's
    this_machine = machine_info()
    assert result["machine"] == {"pretrain": this_machine, "finetune": this_machine}
    done = json.loads((out / "value_0.7" / "seed_1" / "pretrain_done.json").read_text())
    assert done["machine"] == this_machine

    # a second invocation launches nothing and writes the same table
    rerun = FakeRunner()
    assert ablation.main(_ablation_args(out), runner=rerun) == summary
    assert rerun.calls == []
    assert "finished earlier" in capsys.readouterr().out

    # an interrupted run (its fine-tuning lost) resumes with the fine-tuning only
    (out / "value_0.7" / "seed_0" / "result.json").unlink()
    rerun = FakeRunner()
    assert ablation.main(_ablation_args(out), runner=rerun) == summary
    assert len(rerun.calls) == 1 and "MODEL.WEIGHTS" in rerun.calls[0] and "--resume" not in rerun.calls[0]

    # a pretraining interrupted after a checkpoint continues with --resume (its folder is kept); one
    # interrupted before any checkpoint starts again from an empty folder
    run = out / "value_0.7" / "seed_1"
    for f in ("result.json", "pretrain_done.json", "pretrain/model_final.pth"):
        (run / f).unlink()
    (run / "pretrain" / "model_0000009.pth").write_bytes(b"")
    (run / "pretrain" / "last_checkpoint").write_text("model_0000009.pth")
    (run / "finetune" / "stale.txt").write_text("")
    rerun = FakeRunner()
    assert ablation.main(_ablation_args(out), runner=rerun) == summary
    assert len(rerun.calls) == 2
    assert rerun.calls[0][:3] == ["--config-file", PRETRAIN_CONFIG, "--resume"]
    assert (run / "pretrain" / "model_0000009.pth").exists()
    assert "--resume" not in rerun.calls[1] and not (run / "finetune" / "stale.txt").exists()
    assert "continuing the interrupted attempt" in capsys.readouterr().out


def test_ablation_records_paths_inside_the_repository_relative_to_it(tmp_path, monkeypatch):
    # the repository is tmp_path/repo, whose results/ is a symlink to a folder outside it (a shared disk):
    # the runs' folders are named through the symlink, relative to the repository (train_net.py runs there),
    # so the committed JSON holds no machine's path; config files outside the repository stay absolute
    repo, disk = tmp_path / "repo", tmp_path / "disk"
    repo.mkdir()
    (disk / "results").mkdir(parents=True)
    (repo / "results").symlink_to(disk / "results")
    monkeypatch.setattr(ablation, "REPO_ROOT", repo)
    monkeypatch.chdir(repo)
    args = ["--param", "JOINDET.SMOOTH.MOMENTUM", "--values", "0.2", "--seeds", "1",
            "--pretrain-config", str(REPO_ROOT / PRETRAIN_CONFIG),
            "--finetune-config", str(REPO_ROOT / FINETUNE_CONFIG), "--out-dir", "results/abl"]
    runner = FakeRunner()
    summary = ablation.main(args, runner=runner)
    run = "results/abl/value_0.2/seed_1"
    pre, fine = runner.calls
    assert pre == ["--config-file", str(REPO_ROOT / PRETRAIN_CONFIG), "JOINDET.SMOOTH.MOMENTUM", "0.2",
                   "SEED", "1", "OUTPUT_DIR", f"{run}/pretrain"]
    assert fine == ["--config-file", str(REPO_ROOT / FINETUNE_CONFIG),
                    "MODEL.WEIGHTS", f"{run}/pretrain/model_final.pth", "SEED", "1", "OUTPUT_DIR", f"{run}/finetune"]
    files = [disk / run / "result.json", disk / run / "pretrain_done.json", disk / "results" / "abl" / "table.json"]
    assert all(str(tmp_path) not in f.read_text() for f in files)
    assert json.loads(files[0].read_text())["finetune_argv"] == fine
    assert json.loads(files[1].read_text())["argv"] == pre
    assert summary["rows"][0]["AP"]["mean"] == pytest.approx(10 * 0.2 + 1)

    # the same command from another working directory, naming the folder by its absolute path, finds the runs
    monkeypatch.chdir(tmp_path)
    rerun = FakeRunner()
    assert ablation.main([*args[:-1], str(repo / "results" / "abl")], runner=rerun) == summary
    assert rerun.calls == []


def test_ablation_dry_run_and_bad_input(tmp_path, capsys):
    runner = FakeRunner()
    assert ablation.main(_ablation_args(tmp_path / "dry", values=("0.2",), seeds=("3",)) + ["--dry-run"],
                         runner=runner) is None
    assert runner.calls == []
    out = capsys.readouterr().out
    assert "train_net.py --config-file" in out and "JOINDET.SMOOTH.MOMENTUM 0.2 SEED 3" in out
    # the commands name configs relative to the repository root, so each says it runs there
    assert f"pretrain: cd {REPO_ROOT} && " in out and f"fine-tune: cd {REPO_ROOT} && " in out
    assert f"--config-file {PRETRAIN_CONFIG} " in out
    assert not (tmp_path / "dry" / "table.md").exists()

    # a key that does not exist fails with yacs' error before any training
    args = _ablation_args(tmp_path / "bad", values=("1",))
    args[1] = "JOINDET.SMOOTH.NO_SUCH_KEY"
    with pytest.raises(SystemExit):
        ablation.main(args, runner=runner)
    assert "Non-existent key: JOINDET.SMOOTH.NO_SUCH_KEY" in capsys.readouterr().err
    # a value JoinDet's validation rejects (m_s outside [0, 1]) fails the same way
    with pytest.raises(SystemExit):
        ablation.main(_ablation_args(tmp_path / "bad", values=("1.5",)), runner=runner)
    assert "MOMENTUM" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(_ablation_args(tmp_path / "bad") + ["--pretrain-opts", "SEED", "4"], runner=runner)
    assert "must not set ['SEED']" in capsys.readouterr().err

    # the two modes exclude each other; --param needs its values and pretraining config
    with pytest.raises(SystemExit):
        ablation.main(_ablation_args(tmp_path / "bad") + ["--methods", "configs/mini/compare_methods.yaml"],
                      runner=runner)
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--param", "JOINDET.SMOOTH.MOMENTUM", "--out-dir", str(tmp_path / "bad")], runner=runner)
    assert "--param needs --values and --pretrain-config and --finetune-config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--methods", "configs/mini/compare_methods.yaml", "--pretrain-config", PRETRAIN_CONFIG,
                       "--finetune-config", FINETUNE_CONFIG, "--out-dir", str(tmp_path / "bad")], runner=runner)
    assert "--pretrain-config is not used with --methods" in capsys.readouterr().err
    assert runner.calls == []


def test_read_bbox_results_and_categorical_plot(tmp_path, capsys):
    # the file train_net.py writes: {dataset: {task: {metric: value}}}, NaN for what could not be computed
    write_results(str(tmp_path), {"a_val": {"bbox": {"AP": 7.0, "APl": float("nan")}, "segm": {"AP": 1.0}},
                                  "b_val": {"bbox": {"AP": 4.0}}, "c_val": {"segm": {"AP": 2.0}}})
    bbox = ablation.read_bbox_results(tmp_path, ["a_val", "c_val", "b_val", "d_val"])
    assert sorted(bbox) == ["a_val", "b_val"]  # datasets without bbox results are left out
    assert bbox["a_val"]["AP"] == 7.0 and np.isnan(bbox["a_val"]["APl"]) and bbox["b_val"] == {"AP": 4.0}
    # the scoring dataset (the first) must be there; a missing file or dataset names the file
    path = str(tmp_path / "eval_results.json")
    with pytest.raises(ablation.TrainingFailed, match="no bbox results for c_val") as failed:
        ablation.read_bbox_results(tmp_path, ["c_val", "a_val"])
    assert path in str(failed.value)
    with pytest.raises(ablation.TrainingFailed, match="no bbox results for d_val") as failed:
        ablation.read_bbox_results(tmp_path, ["d_val"])
    assert path in str(failed.value) and "['a_val', 'b_val', 'c_val']" in str(failed.value)
    # one test dataset: Detectron2 returns (and train_net.py writes) its {task: {metric}} unwrapped
    write_results(str(tmp_path / "one"), {"bbox": {"AP": 5.0}, "segm": {"AP": 1.0}})
    assert ablation.read_bbox_results(tmp_path / "one", ["a_val"]) == {"a_val": {"AP": 5.0}}
    write_results(str(tmp_path / "one"), {"segm": {"AP": 1.0}})
    with pytest.raises(ablation.TrainingFailed, match="no bbox results for a_val .*top-level keys: \\['segm'\\]"):
        ablation.read_bbox_results(tmp_path / "one", ["a_val"])
    with pytest.raises(ablation.TrainingFailed, match="not found") as failed:
        ablation.read_bbox_results(tmp_path / "empty", ["a_val"])
    assert str(tmp_path / "empty" / "eval_results.json") in str(failed.value)

    # a fine-tuning that writes no results fails the run with that message (and writes no result.json)
    def no_results(argv, log_file, env):
        out = dict(zip(argv[2::2], argv[3::2]))["OUTPUT_DIR"]
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "model_final.pth"), "wb").close()
        return ""

    with pytest.raises(SystemExit) as exited:
        ablation.main(_ablation_args(tmp_path / "abl", values=("0.2",), seeds=("0",)), runner=no_results)
    run = tmp_path / "abl" / "value_0.2" / "seed_0"
    assert exited.value.code == 1
    assert f"{run / 'finetune' / 'eval_results.json'} not found" in capsys.readouterr().err
    assert (run / "pretrain_done.json").is_file() and not (run / "result.json").exists()

    results = [{"value": v, "seed": s, "bbox": {"AP": a, "AP50": a, "AP75": a}}
               for v, s, a in [("random_crops", 0, 1.0), ("selective_search", 0, 3.0)]]
    summary = ablation.summarize(results, "JOINDET.PRIORS.INIT_SOURCE", ["selective_search", "random_crops"])
    assert [r["value"] for r in summary["rows"]] == ["selective_search", "random_crops"]
    assert summary["rows"][0]["AP"] == {"mean": 3.0, "std": None}  # one seed: no std
    assert "| selective_search" in ablation.format_ablation_table(summary)
    ablation.plot_ablation(summary, str(tmp_path / "cat.png"))
    assert cv2.imread(str(tmp_path / "cat.png")) is not None


# --------------------------------------------------------------------------- method comparison
METHODS_YAML = f"""
- name: no_pretraining
  pretrain_config: null
  finetune_config: {NO_PRETRAIN_FINETUNE_CONFIG}
- name: detreg
  pretrain_config: {DETREG_CONFIG}
- name: joindet_ncut
  pretrain_config: {PRETRAIN_CONFIG}
  pretrain_opts: [JOINDET.REFRESH.GENERATOR, ncut_encoder, JOINDET.SMOOTH.MOMENTUM, 0.2]
  finetune_opts: [SOLVER.BASE_LR, 0.0001]
"""
METHOD_AP = {"method_no_pretraining": 1.0, "method_detreg": 3.0, "method_joindet_ncut": 6.0}


def _comparison_args(methods_file, out_dir, seeds=("0", "1")):
    return ["--methods", str(methods_file), "--seeds", *seeds, "--finetune-config", FINETUNE_CONFIG,
            "--out-dir", str(out_dir)]


def _method_runner():
    """The fake train_net.py of a comparison: AP = METHOD_AP[the run's method folder] + seed."""
    return FakeRunner(score=lambda run: METHOD_AP[os.path.basename(os.path.dirname(run))],
                      finetune_config_files=(FINETUNE_CONFIG, NO_PRETRAIN_FINETUNE_CONFIG))


def test_comparison_runs_each_method_and_resumes(tmp_path, capsys):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(METHODS_YAML)
    out = tmp_path / "cmp"
    runner = _method_runner()
    summary = ablation.main(_comparison_args(methods_file, out), runner=runner)
    # no_pretraining: 2 fine-tunings only; detreg and joindet_ncut: 2 x (pretrain + fine-tune) each
    assert len(runner.calls) == 10
    # seed by seed: every method's seed-0 run, then every method's seed-1 run (a partial table is paired)
    no_pre, no_pre_1 = runner.calls[0], runner.calls[5]
    run = out / "method_no_pretraining" / "seed_0"
    assert no_pre == ["--config-file", NO_PRETRAIN_FINETUNE_CONFIG,
                      "SEED", "0", "OUTPUT_DIR", str(run / "finetune")]  # no MODEL.WEIGHTS: the config's own
    assert "MODEL.WEIGHTS" not in no_pre_1 and not (run / "pretrain").exists()
    assert not (run / "pretrain_done.json").exists()
    detreg_pre, detreg_fine = runner.calls[1], runner.calls[2]
    run = out / "method_detreg" / "seed_0"
    assert detreg_pre == ["--config-file", DETREG_CONFIG,
                          "SEED", "0", "OUTPUT_DIR", str(run / "pretrain")]
    assert detreg_fine == ["--config-file", FINETUNE_CONFIG,  # --finetune-config, the default
                           "MODEL.WEIGHTS", str(run / "pretrain" / "model_final.pth"),
                           "SEED", "0", "OUTPUT_DIR", str(run / "finetune")]
    ncut_pre, ncut_fine = runner.calls[3], runner.calls[4]
    run = out / "method_joindet_ncut" / "seed_0"
    assert ncut_pre == ["--config-file", PRETRAIN_CONFIG,
                        "JOINDET.REFRESH.GENERATOR", "ncut_encoder", "JOINDET.SMOOTH.MOMENTUM", "0.2",
                        "SEED", "0", "OUTPUT_DIR", str(run / "pretrain")]
    assert ncut_fine[2:] == ["SOLVER.BASE_LR", "0.0001", "MODEL.WEIGHTS", str(run / "pretrain" / "model_final.pth"),
                             "SEED", "0", "OUTPUT_DIR", str(run / "finetune")]

    # rows in file order; AP = METHOD_AP + seed over seeds 0, 1
    table = json.loads((out / "table.json").read_text())
    assert table == summary and table["param"] == "method" and table["seeds"] == [0, 1]
    assert [r["value"] for r in table["rows"]] == ["no_pretraining", "detreg", "joindet_ncut"]
    for row in table["rows"]:
        base = METHOD_AP[f"method_{row['value']}"]
        assert row["n"] == 2 and row["per_seed"]["AP"] == pytest.approx([base, base + 1])
        assert row["AP"]["mean"] == pytest.approx(base + 0.5) and row["AP"]["std"] == pytest.approx(np.sqrt(0.5))
    assert [m["name"] for m in table["methods"]] == ["no_pretraining", "detreg", "joindet_ncut"]
    assert table["methods"][0]["pretrain_config"] is None
    assert table["methods"][1]["pretrain_config"] == DETREG_CONFIG  # inside the repository: relative to it
    assert table["methods"][2]["finetune_opts"] == ["SOLVER.BASE_LR", "0.0001"]
    md = (out / "table.md").read_text().strip().splitlines()
    assert len(md) == 5 and md[0].split("|")[1].strip() == "method"
    # paired with detreg (listed: the default reference) seed by seed: AP differences -2, -2 and +3, +3
    assert md[0].split("|")[-2].strip() == "AP - detreg, paired [95% CI]"
    assert [c.strip() for c in md[2].split("|")[1:-1]] == ["no_pretraining", "1.5 ± 0.7", "21.5 ± 0.7", "0.8 ± 0.4",
                                                          "2", "-2.0 [-2.0, -2.0] (n 2)"]
    assert md[3].split("|")[-2].strip() == "-"  # detreg itself
    assert table["reference"] == "detreg"
    assert table["rows"][2]["paired_vs_detreg"] == {"mean": 3.0, "std": 0.0, "ci95_low": 3.0, "ci95_high": 3.0, "n": 2}
    assert [r["name"] for r in table["rows"]] == ["no_pretraining", "detreg", "joindet_ncut"]
    assert cv2.imread(str(out / "plot.png")) is not None
    result = json.loads((out / "method_no_pretraining" / "seed_1" / "result.json").read_text())
    assert result["value"] == "no_pretraining" and result["pretrain_argv"] is None
    assert result["bbox"]["AP"] == pytest.approx(2.0) and result["dataset"] == "synth_val"

    # a second invocation launches nothing and writes the same table
    rerun = _method_runner()
    assert ablation.main(_comparison_args(methods_file, out), runner=rerun) == summary
    assert rerun.calls == []
    assert "finished earlier" in capsys.readouterr().out

    # lost fine-tunings resume alone: a pretrained method's from its checkpoint, no_pretraining's as before
    (out / "method_joindet_ncut" / "seed_1" / "result.json").unlink()
    (out / "method_no_pretraining" / "seed_0" / "result.json").unlink()
    rerun = _method_runner()
    assert ablation.main(_comparison_args(methods_file, out), runner=rerun) == summary
    run = out / "method_joindet_ncut" / "seed_1"
    assert rerun.calls == [no_pre, ["--config-file", FINETUNE_CONFIG, "SOLVER.BASE_LR", "0.0001",
                                    "MODEL.WEIGHTS", str(run / "pretrain" / "model_final.pth"),
                                    "SEED", "1", "OUTPUT_DIR", str(run / "finetune")]]


def test_comparison_table_only_tabulates_the_finished_runs_and_runs_nothing(tmp_path, capsys):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(METHODS_YAML)
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit):  # nothing finished yet: nothing to tabulate
        ablation.main([*_comparison_args(methods_file, out), "--table-only"], runner=_method_runner())
    assert "no finished run" in capsys.readouterr().err
    ablation.main(_comparison_args(methods_file, out), runner=_method_runner())
    (out / "method_detreg" / "seed_0" / "result.json").unlink()  # detreg: seed 1 only
    for seed in (0, 1):  # joindet_ncut: nothing
        (out / "method_joindet_ncut" / f"seed_{seed}" / "result.json").unlink()
    runner = _method_runner()
    summary = ablation.main([*_comparison_args(methods_file, out), "--table-only"], runner=runner)
    assert runner.calls == []
    assert [(r["value"], r["n"], r["seeds"]) for r in summary["rows"]] == [("no_pretraining", 2, [0, 1]),
                                                                          ("detreg", 1, [1])]
    assert summary["rows"][1]["AP"] == {"mean": pytest.approx(4.0), "std": None}
    assert summary["unfinished"] == [{"method": "detreg", "seed": 0}, {"method": "joindet_ncut", "seed": 0},
                                     {"method": "joindet_ncut", "seed": 1}]
    assert json.loads((out / "table.json").read_text()) == summary
    assert "method=joindet_ncut seed=1: not finished" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ablation.main([*_comparison_args(methods_file, out), "--table-only", "--dry-run"], runner=runner)
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("methods_yaml, expected", [
    (f"- name: a\n  pretrain_config: {PRETRAIN_CONFIG}\n- name: a\n  pretrain_config: null\n",
     ["method 'a': duplicate name (methods #1 and #2)"]),
    (f"- name: a\n  pretrain_config: {PRETRAIN_CONFIG}\n- pretrain_config: {DETREG_CONFIG}\n",
     ["method #2 has no 'name'"]),
    (f"- name: a\n  pretrain_config: {PRETRAIN_CONFIG}\n  pretrain_opt: [SOLVER.MAX_ITER, 10]\n",
     ["method 'a': unknown key(s) ['pretrain_opt']"]),
    (f"- name: a\n  pretrain_config: {PRETRAIN_CONFIG}\n  pretrain_opts: [JOINDET.REFRESH.NO_SUCH_KEY, 1]\n",
     ["method 'a': pretraining config", "Non-existent key: JOINDET.REFRESH.NO_SUCH_KEY"]),
    (f"- name: a\n  pretrain_config: {PRETRAIN_CONFIG}\n  pretrain_opts: [SEED, 4]\n",
     ["method 'a': pretrain_opts must not set ['SEED']"]),
    ("- name: a\n  pretrain_config: null\n  pretrain_opts: [JOINDET.REFRESH.GENERATOR, rescore]\n",
     ["method 'a': pretrain_opts without a pretrain_config"]),
    ("- name: ../a\n  pretrain_config: null\n", ["method #1: name '../a' is not a safe folder name"]),
    ("- name: a\n", ["method 'a': 'pretrain_config' is required"]),
    ("- name: a\n  pretrain_config: configs/no_such.yaml\n",
     ["method 'a': config file 'configs/no_such.yaml' not found"]),
    (f"- name: a\n  pretrain_config: null\n  finetune_config: {FINETUNE_CONFIG}\n"
     "  finetune_opts: [DATASETS.TEST, '()']\n",
     ["method 'a':", "has no DATASETS.TEST"]),
    ("name: a\npretrain_config: null\n", ["must be a non-empty YAML list of methods"]),
])
def test_comparison_rejects_bad_method_files(tmp_path, capsys, methods_yaml, expected):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(methods_yaml)
    runner = _method_runner()
    with pytest.raises(SystemExit):
        ablation.main(_comparison_args(methods_file, tmp_path / "cmp"), runner=runner)
    err = capsys.readouterr().err
    assert f"methods file {methods_file}" in err
    for text in expected:
        assert text in err
    assert runner.calls == [] and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("methods_file, finetune_config, dataset", [
    ("configs/mini/compare_methods.yaml", FINETUNE_CONFIG, "SYNTHETIC"),
    ("configs/mini/clutter/compare_methods.yaml", "configs/mini/clutter/finetune_clutter_10pct.yaml", "CLUTTER"),
])
def test_compare_methods_configs_validate(tmp_path, methods_file, finetune_config, dataset):
    # every merged config of the shipped comparisons validates; the dry run launches nothing
    methods = ablation.load_methods(methods_file)
    names = [m["name"] for m in methods]
    assert names[0] == "detreg" and {"joindet_ncut_encoder", "gt_boxes", "ss_gt_filtered", "no_pretraining"} <= set(names)
    assert [m["name"] for m in methods if m.get("default")] == ["joindet_ncut_encoder"]
    assert sorted(m["name"] for m in methods if m.get("uses_labels")) == ["gt_boxes", "ss_gt_filtered"]
    lines, runner = [], _method_runner()
    assert ablation.run_comparison(methods_file, [0], finetune_config, str(tmp_path / "cmp"), dry_run=True,
                                   finetune_opts=[f"DATASETS.{dataset}.NUM_VAL", "500"], runner=runner,
                                   log=lines.append) is None
    assert runner.calls == [] and not (tmp_path / "cmp").exists()
    assert len(lines) == 2 * len(names)  # the pretraining (or its absence) and the fine-tuning of each run
    by_name = {name: (lines[2 * i], lines[2 * i + 1]) for i, name in enumerate(names)}
    for name, (pretrain, finetune) in by_name.items():
        assert f"DATASETS.{dataset}.NUM_VAL 500" in finetune
        if name != "no_pretraining":
            weights = tmp_path / "cmp" / f"method_{name}" / "seed_0" / "pretrain" / "model_final.pth"
            assert f"MODEL.WEIGHTS {weights} SEED 0" in finetune
    assert "no pretraining" in by_name["no_pretraining"][0]
    assert "JOINDET.REFRESH.GENERATOR ncut_encoder SEED 0" in by_name["joindet_ncut_encoder"][0]
    assert "JOINDET.PRIORS.INIT_SOURCE gt_boxes" in by_name["gt_boxes"][0]


def test_paired_difference_is_the_student_t_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3)
    stat = ablation.paired_difference([1.0, 2.0, 3.0])
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(2.0) and stat["std"] == pytest.approx(1.0)
    half = 4.302652729749464 / np.sqrt(3)
    assert stat["ci95_low"] == pytest.approx(2.0 - half) and stat["ci95_high"] == pytest.approx(2.0 + half)
    # five pairs: t(0.975, 4) = 2.776445
    diffs = [0.5, -0.2, 1.1, 0.9, 0.3]
    stat = ablation.paired_difference(diffs)
    half = 2.7764451051977987 * np.std(diffs, ddof=1) / np.sqrt(5)
    assert stat["ci95_high"] - stat["mean"] == pytest.approx(half)
    assert ablation.paired_difference([0.7]) == {"mean": 0.7, "std": None, "ci95_low": None, "ci95_high": None, "n": 1}
    assert ablation.paired_difference([1.0, None])["mean"] is None  # a metric Detectron2 could not compute


def test_summarize_pairs_only_the_seeds_both_rows_finished():
    results = [{"value": v, "seed": s, "bbox": {"AP": a, "AP50": a, "AP75": a}}
               for v, s, a in [("detreg", 0, 5.0), ("detreg", 1, 7.0), ("detreg", 2, 6.0),
                               ("joindet", 0, 6.0), ("joindet", 2, 8.0), ("joindet", 3, 9.0)]]
    summary = ablation.summarize(results, "method", ["detreg", "joindet"], reference="detreg")
    paired = summary["rows"][1]["paired_vs_detreg"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(1.5)  # seeds 0 (+1) and 2 (+2); seed 3 unpaired
    assert summary["rows"][0]["paired_vs_detreg"]["mean"] == 0.0
    with pytest.raises(ValueError, match="no finished run for the reference method = ref"):
        ablation.summarize(results, "method", ["detreg"], reference="ref")


def test_comparison_only_jobs_flags_and_claims(tmp_path, capsys):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(METHODS_YAML.replace("  finetune_opts: [SOLVER.BASE_LR, 0.0001]\n",
                                                 "  finetune_opts: [SOLVER.BASE_LR, 0.0001]\n  default: true\n"))
    # --only: the named methods alone
    runner = _method_runner()
    summary = ablation.main([*_comparison_args(methods_file, tmp_path / "one"), "--only", "detreg"], runner=runner)
    assert [r["name"] for r in summary["rows"]] == ["detreg"] and len(runner.calls) == 4
    with pytest.raises(SystemExit):
        ablation.main([*_comparison_args(methods_file, tmp_path / "one"), "--only", "dino"], runner=runner)
    assert "--only ['dino']: not among the methods" in capsys.readouterr().err

    # two jobs at a time give the table of one at a time; the default row is marked
    serial = ablation.main(_comparison_args(methods_file, tmp_path / "serial"), runner=_method_runner())
    parallel_runner = _method_runner()
    parallel = ablation.main([*_comparison_args(methods_file, tmp_path / "par"), "--jobs", "2"],
                             runner=parallel_runner)
    assert len(parallel_runner.calls) == 10
    strip = lambda t: {k: v for k, v in t.items() if k != "methods"}  # noqa: E731
    assert strip(parallel)["rows"] == strip(serial)["rows"]
    assert [r.get("default") for r in parallel["rows"]] == [False, False, True]
    assert "joindet_ncut (default)" in (tmp_path / "par" / "table.md").read_text()
    assert not list((tmp_path / "par").rglob(".claim"))  # every claim released

    # a run claimed by a live process of this host is waited for, not trained twice; a dead one's claim is taken
    out = tmp_path / "claimed"
    run = out / "method_detreg" / "seed_0"
    run.mkdir(parents=True)
    (run / ".claim").write_text(f"{socket.gethostname()} {os.getppid()}")
    finished = json.loads((tmp_path / "serial" / "method_detreg" / "seed_0" / "result.json").read_text())
    timer = threading.Timer(0.3, lambda: (run / "result.json").write_text(json.dumps(finished)))
    timer.start()
    lines, runner = [], _method_runner()
    summary = ablation.run_comparison(str(methods_file), [0], FINETUNE_CONFIG, str(out), only=["detreg"],
                                      runner=runner, log=lines.append, poll_s=0.05)
    timer.join()
    assert runner.calls == [] and summary["rows"][0]["per_seed"]["AP"] == [3.0]
    assert any("another process is running it" in line for line in lines)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "result.json").unlink()
    (run / ".claim").write_text(f"{socket.gethostname()} {dead.pid}")
    runner = _method_runner()
    ablation.main([*_comparison_args(methods_file, out, seeds=("0",)), "--only", "detreg"], runner=runner)
    assert len(runner.calls) == 2 and not (run / ".claim").exists()

    # flags are booleans, and a method that reads the labels cannot be the default
    for bad, message in (("  default: yes please\n", "default must be true or false"),
                         ("  default: true\n  uses_labels: true\n", "reads the labels (uses_labels)")):
        methods_file.write_text(f"- name: a\n  pretrain_config: {DETREG_CONFIG}\n{bad}")
        with pytest.raises(SystemExit):
            ablation.main(_comparison_args(methods_file, tmp_path / "bad"), runner=runner)
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- one real tiny run
TINY_PRETRAIN_OPTS = [
    *TINY_DATA_OPTS, *TINY_MODEL_OPTS,
    "DATASETS.TRAIN", "('synth_train_unlabeled',)", "DATASETS.TEST", "()",
    "JOINDET.LSJ.IMAGE_SIZE", str(TINY_IMAGE_SIZE), "JOINDET.EMBED_CROP_SIZE", "32",
    "JOINDET.PRIORS.INIT_SOURCE", "random_crops", "JOINDET.PRIORS.NUM_WORKERS", "0", "JOINDET.PRIORS.TOPK", "10",
    "JOINDET.PRIORS.EVAL_DATASET", "", "JOINDET.NCUT.FEATURE_LEVEL", "0", "JOINDET.NCUT.BATCH_SIZE", "4",
    "JOINDET.REFRESH.BATCH_SIZE", "4",
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "1",
]
TINY_FINETUNE_OPTS = [
    *TINY_DATA_OPTS, *TINY_MODEL_OPTS,
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "1",
]


def test_ablation_real_tiny_run(subprocess_env, tmp_path):
    out = tmp_path / "real"
    summary = ablation.main(
        ["--param", "JOINDET.SMOOTH.MOMENTUM", "--values", "0.45", "--seeds", "0",
         "--pretrain-config", PRETRAIN_CONFIG, "--finetune-config", FINETUNE_CONFIG, "--out-dir", str(out),
         "--pretrain-opts", *TINY_PRETRAIN_OPTS, "SOLVER.MAX_ITER", "5", "JOINDET.UPDATE_PERIOD_ITERS", "2",
         "--finetune-opts", *TINY_FINETUNE_OPTS],
        env=subprocess_env,
    )
    run = out / "value_0.45" / "seed_0"
    result = json.loads((run / "result.json").read_text())
    # the refresh cost, read from the real pretraining's log: 8 images / batch 2 = 4 iterations an epoch,
    # refreshes after iterations 2 and 4 of 5 (versions 1 and 2)
    cost = result["refresh_cost"]
    assert cost["refreshes"] == 2 and cost["iters_per_epoch"] == 4.0 and cost["seconds_per_iter"] > 0
    assert cost["fraction_of_epoch"] == pytest.approx(cost["seconds_mean"] / (4.0 * cost["seconds_per_iter"]))
    assert "Starting training" in (run / "pretrain.log").read_text()
    assert f"Loading from {run / 'pretrain' / 'model_final.pth'}" in (run / "finetune.log").read_text()
    assert result["dataset"] == "synth_val" and summary["rows"][0]["n"] == 1

    # the AP read from eval_results.json is pycocotools' AP of the detections the fine-tuned model wrote
    register_synthetic(num_train=8, num_val=4, image_size=TINY_IMAGE_SIZE)
    gt = COCO(MetadataCatalog.get("synth_val").json_file)
    detections = json.loads((run / "finetune" / "inference" / "coco_instances_results.json").read_text())
    assert detections  # the model returns its top NUM_DETECTIONS boxes per image
    evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    expected = [100 * evaluator.stats[i] for i in range(3)]
    got = [result["bbox"][k] for k in ("AP", "AP50", "AP75")]
    assert got == pytest.approx(expected, abs=1e-3)
    assert (out / "table.md").read_text().count("\n") == 3


def test_comparison_shows_the_prior_quality_of_the_last_version_beside_the_ap(tmp_path):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(METHODS_YAML)
    fake = _method_runner()

    def runner(argv, log_file, env):  # the pretraining's refresh hook also writes the quality per version
        out = fake(argv, log_file, env)
        opts = dict(zip(argv[2::2], argv[3::2]))
        if out == "pretrained\n":
            seed = int(opts["SEED"])
            bank = os.path.join(opts["OUTPUT_DIR"], "prior_bank")
            os.makedirs(bank)
            with open(os.path.join(bank, "prior_quality.json"), "w") as f:
                json.dump([["v0", {"AP": 20.0, "CorLoc": 50.0}], ["v2", {"AP": 30.0 + seed, "CorLoc": 60.0}]], f)
        return out

    out = tmp_path / "cmp"
    summary = ablation.main(_comparison_args(methods_file, out), runner=runner)
    rows = {r["name"]: r for r in summary["rows"]}
    assert "prior_quality_last" not in rows["no_pretraining"]
    q = rows["detreg"]["prior_quality_last"]
    assert q["versions"] == ["v2"] and q["n"] == 2 and q["AP"]["mean"] == pytest.approx(30.5)
    assert q["CorLoc"] == {"mean": pytest.approx(60.0), "std": pytest.approx(0.0)}
    result = json.loads((out / "method_detreg" / "seed_1" / "result.json").read_text())
    assert result["prior_quality"][-1] == ["v2", {"AP": 31.0, "CorLoc": 60.0}]
    md = (out / "table.md").read_text()
    assert "priors, last version: AP / CorLoc" in md and "v2: 30.5 / 60.0" in md

    # a result written without it (an older run) is completed from the bank while the bank is there
    for seed in (0, 1):
        path = out / "method_detreg" / f"seed_{seed}" / "result.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "prior_quality"}))
    again = ablation.main([*_comparison_args(methods_file, out), "--table-only"], runner=runner)
    assert {r["name"]: r for r in again["rows"]}["detreg"]["prior_quality_last"] == q
    assert "prior_quality" in json.loads((out / "method_detreg" / "seed_0" / "result.json").read_text())


def test_refresh_cost_reads_the_log_the_config_and_the_bank(tmp_path):
    """A refresh's seconds against an epoch's (images / batch x seconds per iteration); a version a resumed run
    redid counts once (its last line), the last training speed counts; a run without refreshes costs 0."""
    pretrain = tmp_path / "pretrain"
    PriorBank(pretrain / "prior_bank").write_version(
        0, list(range(1, 41)), [np.array([[0, 0, 8, 8]], np.float32)] * 40, [np.ones(1, np.float32)] * 40)
    (pretrain / "config.yaml").write_text("SOLVER:\n  IMS_PER_BATCH: 8\n")
    log = pretrain / "log.txt"
    log.write_text(
        "[12/06 20:59:17] joindet INFO: Prior bank version 1 at iteration 100 (ncut_encoder): 99.0 s, 3 images\n"
        "[12/06 21:02:00] d2.engine.hooks INFO: Overall training speed: 120 iterations in 0:07:00 (3.5000 s / it)\n"
        "[12/06 21:09:17] joindet INFO: Prior bank version 1 at iteration 100 (ncut_encoder): 10.0 s, 3 images\n"
        "[12/06 21:19:17] joindet INFO: Prior bank version 2 at iteration 200 (ncut_encoder): 20.0 s, 0 images\n"
        "[12/06 21:28:43] d2.engine.hooks INFO: Overall training speed: 298 iterations in 0:10:00 (2.0000 s / it)\n")
    cost = ablation.refresh_cost(pretrain)
    assert cost == {"refreshes": 2, "seconds_mean": 15.0, "seconds_per_iter": 2.0, "iters_per_epoch": 5.0,
                    "fraction_of_epoch": pytest.approx(15.0 / 10.0)}
    log.write_text("[12/06 21:28:43] d2.engine.hooks INFO: Overall training speed: 298 iterations in 0:10:00 "
                   "(2.0000 s / it)\n")
    assert ablation.refresh_cost(pretrain)["fraction_of_epoch"] == 0.0
    log.write_text("no speed line: the run did not finish\n")
    assert ablation.refresh_cost(pretrain) is None
    assert ablation.refresh_cost(tmp_path / "missing") is None


def test_machine_info_reads_the_cpu_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\n"
                       "model name\t: Example CPU @ 2.00GHz\nstepping\t: 1\nflags\t\t: fpu avx2\n\n"
                       "processor\t: 1\nmodel name\t: Other CPU\n")
    fields = cpu_fields(str(cpuinfo))
    assert fields["model name"] == "Example CPU @ 2.00GHz" and fields["flags"] == "fpu avx2"  # the first processor
    info = machine_info(str(cpuinfo))
    assert info["cpu"] == "Example CPU @ 2.00GHz"
    assert info["cpu_id"] == "GenuineIntel cpu family 6 model 167 stepping 1"
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and json.loads(json.dumps(info)) == info
    assert cpu_fields(str(tmp_path / "missing")) == {}


def test_compare_targets_tool_scores_the_supervising_boxes_against_a_labelled_dataset(tiny_bank, capsys):
    from joindet.tools import compare_targets as targets_tool
    bank, dicts = tiny_bank
    rows = dict(targets_tool.main(["--bank", str(bank.root), "--versions", "1", "--train-topk", "0",
                                   "--reference-topk", "0", "--dataset", "synth_train", *SYNTH_ARGS]))
    num_objects = sum(len(_gt_xyxy(d)) for d in dicts)
    # v1 holds every object's box and one distractor per image
    assert rows["v1"]["objects_hit"] == 100.0
    assert rows["v1"]["on_object"] == pytest.approx(100 * num_objects / (num_objects + 2))
    with pytest.raises(SystemExit):  # the unlabelled view: the error names the labelled one
        targets_tool.main(["--bank", str(bank.root), "--train-topk", "0", "--reference-topk", "0",
                           "--dataset", "synth_train_unlabeled", *SYNTH_ARGS])
    assert "use its labelled counterpart 'synth_train'" in capsys.readouterr().err
