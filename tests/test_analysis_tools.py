"""Tests of the analysis tools: the prior-evolution figure (one panel per bank version + selective
search, per image) with its quality plot, and the resumable ablation runner (orchestration with a
fake training runner, plus one real tiny pretrain + fine-tune run through ``train_net.py``)."""
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from joindet.data.synthetic import register_synthetic
from joindet.priors.bank import PriorBank
from joindet.tools import ablation, prior_evolution
from joindet.tools.prior_evolution import LABEL_WIDTH, TITLE_HEIGHT, draw_prior_grid

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


def _copypaste(dataset, ap, ap50, ap75):
    return (f"[d2.engine.defaults]: Evaluation results for {dataset} in csv format:\n"
            "[d2.evaluation.testing]: copypaste: Task: bbox\n"
            "[d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl\n"
            f"[d2.evaluation.testing]: copypaste: {ap:.4f},{ap50:.4f},{ap75:.4f},nan,1.0000,2.0000\n")


class FakeRunner:
    """Records the train_net.py argv of each call; pretraining writes model_final.pth, fine-tuning
    logs a copypaste block with AP = 10 * value + seed, AP50 = AP + 20, AP75 = AP / 2."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, log_file, env):
        self.calls.append(list(argv))
        opts = dict(zip(argv[2::2], argv[3::2]))
        out = opts["OUTPUT_DIR"]
        os.makedirs(out, exist_ok=True)
        if "MODEL.WEIGHTS" not in opts:
            open(os.path.join(out, "model_final.pth"), "wb").close()
            return "pretrained\n"
        value = float(json.load(open(os.path.join(os.path.dirname(out), "pretrain_done.json")))["argv"][-5])
        ap = 10 * value + int(opts["SEED"])
        # an earlier evaluation (replaced by the final one), then the final one
        return _copypaste("synth_val", -1, -1, -1) + "iter 2\n" + _copypaste("synth_val", ap, ap + 20, ap / 2)


def _ablation_args(out_dir, values=("0", "0.7"), seeds=("0", "1")):
    return ["--param", "JOINDET.SMOOTH.MOMENTUM", "--values", *values, "--seeds", *seeds,
            "--pretrain-config", PRETRAIN_CONFIG, "--finetune-config", FINETUNE_CONFIG, "--out-dir", str(out_dir)]


def test_ablation_orchestration_table_and_resume(tmp_path, capsys):
    out = tmp_path / "abl"
    runner = FakeRunner()
    summary = ablation.main(_ablation_args(out), runner=runner)
    assert len(runner.calls) == 8  # 2 values x 2 seeds x (pretrain + fine-tune)
    pre, fine = runner.calls[0], runner.calls[1]
    assert pre[:2] == ["--config-file", str(REPO_ROOT / PRETRAIN_CONFIG)]
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

    # a second invocation launches nothing and writes the same table
    rerun = FakeRunner()
    assert ablation.main(_ablation_args(out), runner=rerun) == summary
    assert rerun.calls == []
    assert "finished earlier" in capsys.readouterr().out

    # an interrupted run (its fine-tuning lost) resumes with the fine-tuning only
    (out / "value_0.7" / "seed_0" / "result.json").unlink()
    rerun = FakeRunner()
    assert ablation.main(_ablation_args(out), runner=rerun) == summary
    assert len(rerun.calls) == 1 and "MODEL.WEIGHTS" in rerun.calls[0]


def test_ablation_dry_run_and_bad_input(tmp_path, capsys):
    runner = FakeRunner()
    assert ablation.main(_ablation_args(tmp_path / "dry", values=("0.2",), seeds=("3",)) + ["--dry-run"],
                         runner=runner) is None
    assert runner.calls == []
    out = capsys.readouterr().out
    assert "train_net.py --config-file" in out and "JOINDET.SMOOTH.MOMENTUM 0.2 SEED 3" in out
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
    assert runner.calls == []


def test_parse_copypaste_and_categorical_plot(tmp_path):
    text = (_copypaste("a_val", 1, 2, 3) + _copypaste("b_val", 4, 5, 6) + _copypaste("a_val", 7, 8, 9)
            + "copypaste: Task: bbox\n")  # a block without its dataset header line is ignored
    parsed = ablation.parse_copypaste(text)
    assert sorted(parsed) == ["a_val", "b_val"]
    assert parsed["a_val"]["bbox"]["AP"] == 7.0 and parsed["b_val"]["bbox"]["AP75"] == 6.0
    assert parsed["a_val"]["bbox"]["APm"] == 1.0

    results = [{"value": v, "seed": s, "bbox": {"AP": a, "AP50": a, "AP75": a}}
               for v, s, a in [("random_crops", 0, 1.0), ("selective_search", 0, 3.0)]]
    summary = ablation.summarize(results, "JOINDET.PRIORS.INIT_SOURCE", ["selective_search", "random_crops"])
    assert [r["value"] for r in summary["rows"]] == ["selective_search", "random_crops"]
    assert summary["rows"][0]["AP"] == {"mean": 3.0, "std": None}  # one seed: no std
    assert "| selective_search" in ablation.format_ablation_table(summary)
    ablation.plot_ablation(summary, str(tmp_path / "cat.png"))
    assert cv2.imread(str(tmp_path / "cat.png")) is not None


# --------------------------------------------------------------------------- one real tiny run
TINY_PRETRAIN_OPTS = [
    *TINY_DATA_OPTS, *TINY_MODEL_OPTS,
    "DATASETS.TRAIN", "('synth_train_unlabeled',)", "DATASETS.TEST", "()",
    "JOINDET.LSJ.IMAGE_SIZE", str(TINY_IMAGE_SIZE), "JOINDET.EMBED_CROP_SIZE", "32",
    "JOINDET.PRIORS.INIT_SOURCE", "random_crops", "JOINDET.PRIORS.NUM_WORKERS", "0", "JOINDET.PRIORS.TOPK", "10",
    "JOINDET.PRIORS.EVAL_DATASET", "", "JOINDET.NCUT.FEATURE_LEVEL", "0", "JOINDET.NCUT.BATCH_SIZE", "4",
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
         "--pretrain-opts", *TINY_PRETRAIN_OPTS, "--finetune-opts", *TINY_FINETUNE_OPTS],
        env=subprocess_env,
    )
    run = out / "value_0.45" / "seed_0"
    result = json.loads((run / "result.json").read_text())
    assert "Starting training" in (run / "pretrain.log").read_text()
    assert f"Loading from {run / 'pretrain' / 'model_final.pth'}" in (run / "finetune.log").read_text()
    assert result["dataset"] == "synth_val" and summary["rows"][0]["n"] == 1

    # the parsed AP is pycocotools' AP of the detections the fine-tuned model wrote
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
