"""Which priors supervise: the selection shared with the mapper, and their comparison with a reference's targets
and the objects (joindet.evaluation.targets, joindet.tools.compare_targets)."""
import json
import re

import numpy as np
import pytest
from detectron2.structures import BoxMode

from joindet.evaluation.targets import compare_targets
from joindet.priors.bank import PriorBank, supervising_index
from joindet.tools import compare_targets as tool

# image 1: reference A, B, C (top 2: A, B); the version: A' (IoU 0.952 with A: A still supervises), D (new),
# B' (IoU 0.625 with B: neither kept nor new) scored 0.5, 0.9, 0.2, so its top 2 are D and A'.
# image 2: reference E; the version E again.
A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
A2, D, B2 = [0, 0, 10, 10.5], [60, 60, 70, 70], [20, 20, 30, 36]
E = [0, 0, 20, 20]
REFERENCE = {1: ([A, B, C], [1.0, 0.9, 0.1]), 2: ([E], [1.0])}
VERSION = {1: ([A2, D, B2], [0.5, 0.9, 0.2]), 2: ([E], [0.3])}
OBJECTS = {1: [[0, 0, 10, 10], [60, 60, 70, 70], [80, 80, 90, 90]], 2: [[100, 100, 110, 110]]}


def _write(bank, version, priors):
    ids = sorted(priors)
    return bank.write_version(version, ids, [np.array(priors[i][0], dtype=np.float32) for i in ids],
                              [np.array(priors[i][1], dtype=np.float32) for i in ids])


@pytest.fixture
def run_bank(tmp_path):
    """A run folder: prior_bank with v0 = REFERENCE, v1 = VERSION, and the config.yaml training writes."""
    bank = PriorBank(tmp_path / "run" / "prior_bank")
    _write(bank, 0, REFERENCE)
    _write(bank, 1, VERSION)
    (tmp_path / "run" / "config.yaml").write_text("JOINDET:\n  PRIORS:\n    TOPK: 3\n    TRAIN_TOPK: 2\n")
    return bank


def _labelled():
    return [{"image_id": i, "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                                            for b in boxes]} for i, boxes in OBJECTS.items()]


def test_supervising_index_is_the_top_k_by_score_ties_in_bank_order():
    scores = np.array([0.5, 0.9, 0.5, 0.1], dtype=np.float32)
    assert supervising_index(scores, 2).tolist() == [1, 0]
    assert supervising_index(scores, 3).tolist() == [1, 0, 2]
    for k in (0, 4, 9):  # 0 = all, and no more than the image has: all, in bank order
        assert supervising_index(scores, k).tolist() == [0, 1, 2, 3]
    assert supervising_index(np.zeros(0), 2).shape == (0,) and supervising_index(scores, 2).dtype == np.int64


def test_compare_targets_counts_against_the_hand_computed_figures(run_bank):
    version, reference = run_bank.read(1), run_bank.read(0)
    result = compare_targets(version, 2, reference, 2, _labelled())
    # supervising: D, A' (image 1) and E (image 2); reference targets: A, B, E
    assert result["num_images"] == 2 and result["supervising_per_image"] == pytest.approx(1.5)
    assert result["reference_kept"] == pytest.approx(100 * 2 / 3)  # A (by A') and E; not B
    assert result["new"] == pytest.approx(100 / 3)  # D
    assert result["on_object"] == pytest.approx(100 * 2 / 3)  # A', D; not E
    assert result["objects_hit"] == pytest.approx(50.0)  # 2 of the 4 objects
    # all three boxes of image 1 supervise: B' overlaps B at IoU 0.625, under the 0.9 of "kept"
    assert compare_targets(version, 0, reference, 2)["reference_kept"] == pytest.approx(100 * 2 / 3)
    # a version against itself keeps every target and adds none; without labels those figures are None
    same = compare_targets(reference, 2, reference, 2)
    assert (same["reference_kept"], same["new"], same["on_object"], same["objects_hit"]) == (100.0, 0.0, None, None)


def test_compare_targets_refuses_images_it_cannot_compare(run_bank, tmp_path):
    partial = PriorBank(tmp_path / "partial")
    _write(partial, 0, {1: REFERENCE[1]})
    with pytest.raises(ValueError, match="reference lacks 1 of the 2 images"):
        compare_targets(run_bank.read(1), 2, partial.read(0), 2)
    with pytest.raises(ValueError, match="labelled dataset lacks 1 of the 2 images"):
        compare_targets(run_bank.read(1), 2, run_bank.read(0), 2, _labelled()[:1])


def test_tool_reads_train_topk_beside_the_bank_and_writes_json(run_bank, tmp_path, capsys):
    out = tmp_path / "targets.json"
    rows = tool.main(["--bank", str(run_bank.root), "--json", str(out)])
    assert [label for label, _ in rows] == ["v0", "v1"]
    assert rows[1][1] == compare_targets(run_bank.read(1), 2, run_bank.read(0), 2)
    printed = capsys.readouterr().out
    assert "top 2 of each image" in printed and "| v1 | 1.5 | 66.7 | 33.3 | - | - |" in printed
    data = json.loads(out.read_text())
    assert data["train_topk"] == 2 and data["reference_version"] == 0 and data["rows"]["v1"]["new"] == pytest.approx(100 / 3)
    # the latest version against the latest version of another bank; explicit K
    rows = tool.main(["--bank", str(run_bank.root), "--versions", "-1", "--train-topk", "0",
                      "--reference-bank", str(run_bank.root), "--reference-version", "-1", "--reference-topk", "0"])
    assert [label for label, _ in rows] == ["v1"] and rows[0][1]["reference_kept"] == 100.0


@pytest.mark.parametrize("extra, message", [
    (["--versions", "5"], r"version\(s\) \[5\] not in prior bank"),
    (["--reference-version", "7"], r"version\(s\) \[7\] not in prior bank"),
    (["--train-topk", "-1"], "--train-topk must be >= 0"),
])
def test_tool_rejects_bad_arguments(run_bank, capsys, extra, message):
    with pytest.raises(SystemExit):
        tool.main(["--bank", str(run_bank.root), *extra])
    assert re.search(message, capsys.readouterr().err)


def test_tool_asks_for_k_when_no_config_is_beside_the_bank(tmp_path, capsys):
    bank = PriorBank(tmp_path / "bare")
    _write(bank, 0, REFERENCE)
    with pytest.raises(SystemExit):
        tool.main(["--bank", str(bank.root)])
    assert "give the number of supervising priors" in capsys.readouterr().err
    assert [label for label, _ in tool.main(["--bank", str(bank.root), "--train-topk", "2", "--reference-topk", "2"])] == ["v0"]
