"""Smoke test of ``python -m joindet.benchmarks.train_step``: the per-stage breakdown of a training step
runs on the tiny pretraining model and its rows are consistent (no timing assertion: the machine is shared)."""
import json

from conftest import TINY_MODEL_OPTS
from test_pretraining import TINY_PRETRAIN_OPTS


def test_train_step_benchmark_smoke(synthetic_cache, tmp_path, one_torch_thread):
    from joindet.benchmarks import train_step

    opts = [*TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    rows = train_step.main(["--iters", "2", "--num-images", "6", "--output-dir", str(tmp_path / "bench"),
                            "--json", str(tmp_path / "step.json"), *opts])
    # every stage of the pretraining step, in step order, then the total
    assert [r["stage"] for r in rows] == [*train_step.STAGES, train_step.TOTAL]
    assert all(set(train_step.COLUMNS) <= set(r) and len(r["ms_per_step"]) == 2 for r in rows)
    total = rows[-1]["median_ms"]
    assert all(r["median_ms"] >= 0.0 and r["median_ms"] <= total for r in rows[:-1])
    assert abs(sum(r["share_pct"] for r in rows[:-1]) - 100.0) < 1e-6  # the exclusive stages add up
    assert json.loads((tmp_path / "step.json").read_text()) == rows
    assert (tmp_path / "bench" / "synthetic").is_dir()  # its own synthetic set, not the shared cache


def test_train_step_benchmark_compares_two_values_side_by_side(synthetic_cache, tmp_path, one_torch_thread, capsys,
                                                               monkeypatch):
    from detectron2.utils.events import get_event_storage

    from joindet.benchmarks import train_step

    storages = []  # the current event storage of every step: each variant's own, as its steps alternate
    timed_step = train_step.timed_step

    def recording_step(*args):
        storages.append(get_event_storage())
        return timed_step(*args)

    monkeypatch.setattr(train_step, "timed_step", recording_step)
    opts = [*TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    rows = train_step.main(["--iters", "1", "--num-images", "6", "--output-dir", str(tmp_path / "bench"),
                            "--compare", "JOINDET.EMBED_LOSS_WEIGHT=1.0,0.5", *opts])
    per_variant = len(train_step.STAGES) + 1
    assert len(rows) == 2 * per_variant
    assert {r["variant"] for r in rows[:per_variant]} == {"JOINDET.EMBED_LOSS_WEIGHT 1.0"}
    assert {r["variant"] for r in rows[per_variant:]} == {"JOINDET.EMBED_LOSS_WEIGHT 0.5"}
    assert all(len(r["ms_per_step"]) == 1 for r in rows)
    assert "JOINDET.EMBED_LOSS_WEIGHT 0.5: data loading" in capsys.readouterr().out
    steps = train_step.WARMUP_ITERS + 1
    assert len(storages) == 2 * steps and storages[0] is not storages[1]
    assert storages == [storages[0], storages[1]] * steps
