"""The demo's report helpers, on results files in the layout the training stages write."""
import json

from joindet.demo import _ap_table, _prior_quality

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
    import pytest

    from conftest import build_cfg
    from joindet import demo

    calls = []

    def first_stage_only(config_file, opts, output_dir):
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
