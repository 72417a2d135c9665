"""The demo's report helpers, on results files in the layout the training stages write; its console (a
header, one progress line per stage, the summary) on stages faked by a short script."""
import json
import subprocess
import sys

import pytest

from joindet.demo import StageProgress, _ap_table, _prior_quality

BBOX = {"AP": 2.5, "AP50": 8.6, "AP75": 0.9, "APs": 5.9, "APm": 3.2, "APl": float("nan")}


def test_ap_table_accepts_one_or_several_test_sets():
    one = _ap_table({"bbox": BBOX})
    several = _ap_table({"synth_val": {"bbox": BBOX}, "other": {"bbox": {k: 0.0 for k in BBOX}}})
    assert one == several
    lines = one.splitlines()
    assert lines[0] == "| AP | AP50 | AP75 | APs | APm | APl |"
    assert lines[2] == "| 2.5 | 8.6 | 0.9 | 5.9 | 3.2 | nan |"


def test_prior_quality_reads_the_hooks_file(tmp_path):
    rows = [["v0", {"AR@1": 10.0, "AR@10": 50.0, "AR@30": 70.0, "AR@100": 70.0, "R50@30": 95.0, "AP": 20.0,
                    "AP50": 40.0, "CorLoc": 55.0, "priors_per_image": 25.0}],
            ["v1", {"AR@1": 1.0, "AR@10": 40.0, "AR@30": 60.0, "AR@100": 60.0, "R50@30": 90.0, "AP": 10.0,
                    "AP50": 20.0, "CorLoc": 12.0, "priors_per_image": 17.0}]]
    (tmp_path / "prior_quality.json").write_text(json.dumps(rows))
    table, parsed = _prior_quality(tmp_path)
    assert [label for label, _ in parsed] == ["v0", "v1"] and parsed[1][1]["AR@30"] == 60.0
    assert "| v0 " in table and "70.0" in table and "| v1 " in table and "60.0" in table


class _Stop(Exception):
    """Raised by the patched ``_run`` to end the demo after the arguments of its first stage are recorded."""


def test_paper_flag_runs_the_papers_refresh(monkeypatch, capsys):
    from conftest import build_cfg
    from joindet import demo

    calls = []

    def first_stage_only(config_file, opts, output_dir, **kwargs):
        calls.append((config_file, list(opts)))
        raise _Stop

    monkeypatch.setattr(demo, "_run", first_stage_only)
    for argv, want in ((["--paper"], demo.PAPER_OPTS), ([], []),
                       (["--generator", "detector"], ["JOINDET.REFRESH.GENERATOR", "detector"])):
        with pytest.raises(_Stop):
            demo.main(argv)
        assert calls[-1][0].endswith("mini/pretrain_synth.yaml") and calls[-1][1] == want
    cfg = build_cfg(demo.PAPER_OPTS, config_file=calls[0][0])  # the keys exist, the values validate
    assert (cfg.JOINDET.REFRESH.GENERATOR, cfg.JOINDET.SMOOTH.SOFT_NMS_SIGMA,
            cfg.JOINDET.PRIORS.OBJECTNESS_TARGET) == ("ncut_encoder", 0.0, "one")
    with pytest.raises(SystemExit):
        demo.main(["--paper", "--generator", "rescore"])
    assert "not both" in capsys.readouterr().err


# A stage as the demo sees it: the log lines of joindet.engine.launcher (Detectron2's and JoinDet's, a
# FutureWarning on stderr among them) and the files the stage writes; argv: OUTPUT_DIR, exit status.
FAKE_STAGE = r"""
import json, os, sys
out, status = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
log = lambda name, msg: print(f"[12/06 20:46:10 {name}]: {msg}", flush=True)
print("/x/torch/jit/_script.py:1491: FutureWarning: `torch.jit.script` is deprecated.", file=sys.stderr)
with open(os.path.join(out, "config.yaml"), "w") as f:
    f.write("SOLVER:\n  MAX_ITER: 300\n")
log("detectron2", f"Full config saved to {out}/config.yaml")
log("d2.engine.defaults", "Model:\nJoinDet(\n  (backbone): ...\n)")
if status:
    raise SystemExit(status)
log("d2.engine.train_loop", "Starting training from iteration 0")
if out.endswith("pretrain"):
    log("joindet", f"prior bank {out}/prior_bank: computing version 0 of synth_train_unlabeled (400 images) with X")
    log("joindet", "selective search: 151/400 images (38%), 7.6 images/s, elapsed 0:00:20, ETA 0:00:33")
    log("joindet", f"prior bank {out}/prior_bank: version 0 (selective_search): 400 images in 38.2 s")
    os.makedirs(os.path.join(out, "prior_bank"), exist_ok=True)
    with open(os.path.join(out, "prior_bank", "prior_quality.json"), "w") as f:
        json.dump([["v0", {"AR@30": 72.4, "AP": 23.2}], ["v1", {"AR@30": 72.5, "AP": 28.9}]], f)
for it in range(19, 300, 20):
    log("d2.utils.events", f" eta: 0:10:00  iter: {it}  total_loss: 18.5  loss_ce: 0.3204")
    if it == 99 and out.endswith("pretrain"):
        log("joindet", "NCut priors: 10/50 batches (20%), 0.8 batches/s, elapsed 0:00:01, ETA 0:00:05")
        log("joindet", "Prior bank version 1 at iteration 100 (ncut_encoder): 1.3 s")
results = {} if out.endswith("pretrain") else {"bbox": {"AP": 8.7, "AP50": 24.6, "AP75": 4.6, "APs": 1.0,
                                                        "APm": 2.0, "APl": 3.0}}
with open(os.path.join(out, "eval_results.json"), "w") as f:
    json.dump(results, f)
"""


def _fake_stages(monkeypatch, status=0):
    from joindet import demo

    monkeypatch.setattr(demo, "_stage_command",
                        lambda config_file, opts, output_dir: [sys.executable, "-c", FAKE_STAGE, str(output_dir),
                                                               str(status)])


def test_console_is_a_header_one_line_per_stage_and_the_summary(monkeypatch, capsys, tmp_path):
    from conftest import build_cfg
    from joindet import demo

    _fake_stages(monkeypatch)
    out = tmp_path / "demo"
    summary = demo.main(["--output-dir", str(out)])
    console = capsys.readouterr().out
    lines = console.splitlines()
    assert len(lines) < 40, console
    assert "FutureWarning" not in console and "Model:\nJoinDet" not in console and "eta:" not in console
    # header: the stages and the refresh mode the pretraining config sets, in one line
    assert lines[0].startswith("JoinDet demo (cpu): pretraining on unlabelled synthetic images")
    assert lines[1].startswith("  pretrain  mini/pretrain_synth.yaml: ") and lines[2].startswith("  finetune  ")
    generator = build_cfg(config_file=demo._config(demo.PRETRAIN_CONFIG, demo.CONFIG_DIR),
                          data_opts=False, tiny_model=False).JOINDET.REFRESH.GENERATOR
    (refresh,) = [x for x in lines if x.startswith("refresh: ")]
    assert refresh.startswith(f"refresh: {generator} (") and "set by mini/pretrain_synth.yaml" in refresh
    assert lines[4].startswith("time: about 29 min") and lines[5].startswith(f"output: {out}/")
    # per stage: the quarters of its iterations (no terminal here), then one final line
    stage_lines = [x for x in lines if x.startswith("[")]
    assert [x.split(" iter ")[1].split(" ")[0] for x in stage_lines if " iter " in x] == \
        ["80/300", "160/300", "240/300"] * 2
    assert stage_lines[3].startswith("[1/2] pretrain done in ") and stage_lines[3].endswith(
        ": 300 iterations, prior versions v0-v1")
    assert stage_lines[7].startswith("[2/2] finetune done in ") and stage_lines[7].endswith(", AP 8.7")
    # summary
    assert "=== JoinDet demo (synthetic set, cpu): done in" in console
    assert "| v1 " in console and "| 8.7 | 24.6 | 4.6 |" in console
    assert "Figure:     not drawn (FileNotFoundError: no complete prior version" in console
    assert f"Model:      {out / 'finetune' / 'model_final.pth'}" in console
    assert f"Logs:       {out / 'pretrain' / 'log.txt'}, {out / 'finetune' / 'log.txt'}" in console
    assert summary["finetune"]["bbox"]["AP"] == 8.7 and summary["prior_quality"]["v1"]["AP"] == 28.9
    # each stage's whole output is kept
    kept = (out / "pretrain" / "console.txt").read_text()
    assert kept.startswith("$ ") and "FutureWarning" in kept and "Model:" in kept


def test_a_failed_stage_shows_the_end_of_its_output(monkeypatch, capsys, tmp_path):
    from joindet import demo

    _fake_stages(monkeypatch, status=3)
    with pytest.raises(subprocess.CalledProcessError):
        demo.main(["--output-dir", str(tmp_path / "demo")])
    console = capsys.readouterr().out
    assert "[1/2] pretrain FAILED (exit status 3) after " in console
    assert "    [12/06 20:46:10 detectron2]: Full config saved to" in console
    assert f"Its whole output: {tmp_path / 'demo' / 'pretrain' / 'console.txt'}" in console


def test_stage_progress_eta_from_the_measured_rate(tmp_path):
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 300\n")
    p = StageProgress(1, 2, "pretrain", start=0.0)
    assert p.line(now=1.0) == "[1/2] pretrain starting | elapsed 0:00:01 | ETA -"
    p.feed(f"[12/06 20:46:10 detectron2]: Full config saved to {tmp_path / 'config.yaml'}\n", now=2.0)
    p.feed("[12/06 20:46:10 joindet]: prior bank b: computing version 0 of synth_train_unlabeled (400 images)", now=3.0)
    p.feed("[12/06 20:46:10 joindet]: selective search: 151/400 images (38%), 7.6 images/s, elapsed 0:00:20, "
           "ETA 0:00:33", now=4.0)
    assert p.line(now=5.0) == ("[1/2] pretrain prior version 0: selective search 151/400 images (ETA 0:00:32) | "
                               "elapsed 0:00:05 | ETA -")
    p.feed("[12/06 20:46:10 joindet]: prior bank b: version 0 (selective_search): 400 images in 38.2 s", now=6.0)
    p.feed("[12/06 20:46:11 d2.utils.events]:  eta: 0:10:00  iter: 19  total_loss: 18.5", now=10.0)
    assert p.line(now=10.0).endswith("iter 20/300 (7%) | elapsed 0:00:10 | ETA 0:10:00")  # Detectron2's at first
    p.feed("\x1b[32m[12/06 20:46:12 d2.utils.events]: \x1b[0m eta: 0:10:00  iter: 39  total_loss: 18.5", now=20.0)
    assert p.line(now=25.0).endswith("iter 40/300 (13%) | elapsed 0:00:25 | ETA 0:02:05")  # 2 it/s: 130 s - 5 s
    p.feed("[12/06 20:46:13 joindet]: NCut priors: 1/4 batches (25%), 1 batches/s, elapsed 0:00:01, ETA 0:00:03",
           now=26.0)
    assert "| refresh v1: NCut priors 1/4 batches (ETA 0:00:03) |" in p.line(now=26.0)
    p.feed("[12/06 20:46:14 joindet]: Prior bank version 1 at iteration 40 (ncut_encoder): 3.0 s", now=29.0)
    assert p.versions == 2 and "refresh" not in p.line(now=29.0)
