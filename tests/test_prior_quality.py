"""Tests of the prior-quality evaluation (class-agnostic AR / AP / CorLoc) and its tool."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from torchvision.ops import box_iou

from joindet.data.synthetic import register_synthetic
from joindet.evaluation import evaluate_priors, format_prior_quality_table
from joindet.priors.bank import PriorBank
from joindet.tools import eval_priors

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def gt_record(image_id, boxes_xyxy, crowd=(), mode=BoxMode.XYXY_ABS):
    """A Detectron2 dict; boxes given XYXY and stored in ``mode``; indices in ``crowd`` are crowd."""
    anns = []
    for i, b in enumerate(boxes_xyxy):
        b = list(map(float, b))
        bbox = b if mode == BoxMode.XYXY_ABS else [b[0], b[1], b[2] - b[0], b[3] - b[1]]
        anns.append({"bbox": bbox, "bbox_mode": mode, "category_id": i % 3, "iscrowd": int(i in crowd)})
    return {"image_id": image_id, "height": 200, "width": 200, "file_name": f"{image_id}.jpg", "annotations": anns}


def priors(boxes, scores):
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def reference_ar(pairs):
    """COCO AR by hand when each GT has exactly one prior: fraction of thresholds its IoU passes."""
    ious = [float(box_iou(torch.tensor([p], dtype=torch.float64), torch.tensor([g], dtype=torch.float64))) for p, g in pairs]
    return 100.0 * np.mean([np.mean(iou >= IOU_THRESHOLDS - 1e-12) for iou in ious])


def test_ground_truth_as_priors_is_perfect(tmp_path):
    gts = {
        1: [[10, 10, 60, 50], [100, 120, 190, 190], [5, 150, 40, 195]],
        2: [[0, 0, 200, 200]],
        5: [[30, 40, 70, 90], [120, 20, 170, 60]],
    }
    dicts = [
        gt_record(1, gts[1] + [[0, 0, 150, 150]], crowd=(3,)),  # the crowd box is skipped
        gt_record(2, gts[2], mode=BoxMode.XYWH_ABS),
        gt_record(5, gts[5], mode=BoxMode.XYWH_ABS),
    ]
    mapping = {i: priors(b, np.linspace(1.0, 0.5, len(b))) for i, b in gts.items()}
    result = evaluate_priors(mapping, dicts)
    for key in ("AR@1", "AR@10", "AR@30", "AR@100", "R50@30", "AP", "AP50", "CorLoc"):
        expected = 100.0 if key != "AR@1" else 100.0 * 3 / 6  # one prior per image covers 3 of 6 boxes
        assert result[key] == pytest.approx(expected, abs=1e-9), key
    assert result["num_images"] == 3 and result["missing_images"] == 0
    assert result["priors_per_image"] == pytest.approx(2.0)

    # A PriorVersion from the bank gives the same numbers as the mapping.
    ids = sorted(mapping)
    pv = PriorBank(tmp_path / "bank").write_version(0, ids, [mapping[i][0] for i in ids], [mapping[i][1] for i in ids])
    assert evaluate_priors(pv, dicts) == pytest.approx(result)


def test_shifted_priors_match_hand_values():
    # A 100x100 GT and the same box shifted by d: IoU = (100 - d) / (100 + d).
    g1, g2, g3 = [0, 0, 100, 100], [100, 100, 200, 200], [0, 100, 100, 200]
    p1 = [25, 0, 125, 100]  # IoU 75/125 = 0.6   -> passes 0.5, 0.55, 0.6: 3 of 10
    p2 = [120, 100, 220, 200]  # IoU 80/120 = 2/3 -> passes 0.5 .. 0.65: 4 of 10
    p3 = [30, 100, 130, 200]  # IoU 70/130 = 0.538 -> passes 0.5 only: 1 of 10
    single = evaluate_priors({7: priors([p1], [1.0])}, [gt_record(7, [g1])])
    for key in ("AR@1", "AR@10", "AR@30", "AR@100"):
        assert single[key] == pytest.approx(30.0)
    assert single["R50@30"] == pytest.approx(100.0)
    assert single["AP"] == pytest.approx(30.0)  # one TP whose precision is 1 at 3 of the 10 thresholds
    assert single["AP50"] == pytest.approx(100.0) and single["CorLoc"] == pytest.approx(100.0)

    result = evaluate_priors({7: priors([p1, p2, p3], [0.9, 0.8, 0.7])}, [gt_record(7, [g1, g2, g3])])
    expected = reference_ar([(p1, g1), (p2, g2), (p3, g3)])
    assert expected == pytest.approx(100.0 * (3 + 4 + 1) / 30)
    assert result["AR@100"] == pytest.approx(expected)
    assert result["AR@30"] == pytest.approx(expected) and result["AR@10"] == pytest.approx(expected)
    assert result["AR@1"] == pytest.approx(30.0 / 3)  # only p1 (top score): 3 of 30 pairs
    assert result["R50@30"] == pytest.approx(100.0)
    assert result["R50@1"] == pytest.approx(100.0 / 3)


def test_wrong_top1_but_right_second():
    g = [50, 50, 120, 140]
    record = gt_record(3, [g])
    result = evaluate_priors({3: priors([[150, 0, 200, 40], g], [0.9, 0.5])}, [record])
    assert result["CorLoc"] == 0.0
    assert result["AR@1"] == 0.0
    assert result["AR@10"] == pytest.approx(100.0) and result["AR@100"] == pytest.approx(100.0)
    # Ranked: FP then TP, so precision is 1/2 wherever recall is reached.
    assert result["AP"] == pytest.approx(50.0) and result["AP50"] == pytest.approx(50.0)

    # Swapping the scores puts the right box first.
    swapped = evaluate_priors({3: priors([[150, 0, 200, 40], g], [0.5, 0.9])}, [record])
    assert swapped["CorLoc"] == 100.0 and swapped["AR@1"] == pytest.approx(100.0)
    assert swapped["AP"] == pytest.approx(100.0)


def test_missing_images_and_images_without_boxes():
    dicts = [gt_record(1, [[0, 0, 50, 50]]), gt_record(2, [[10, 10, 90, 90]]), gt_record(3, [])]
    # Image 2 lacks priors; image 3 has no GT but a high-scoring prior (a false positive);
    # image 99 is not in the dataset and is ignored.
    mapping = {1: priors([[0, 0, 50, 50]], [0.5]), 3: priors([[0, 0, 10, 10]], [0.9]), 99: priors([[0, 0, 9, 9]], [1.0])}
    result = evaluate_priors(mapping, dicts)
    assert result["missing_images"] == 1 and result["num_images"] == 3
    assert result["priors_per_image"] == pytest.approx(2 / 3)
    assert result["AR@100"] == pytest.approx(50.0) and result["R50@30"] == pytest.approx(50.0)
    assert result["CorLoc"] == pytest.approx(50.0)  # image 3 (no GT) is not counted
    # Ranked FP (0.9) then TP (0.5): recall reaches 1/2 at precision 1/2 -> 51 of 101 recall points.
    assert result["AP"] == pytest.approx(100.0 * 0.5 * 51 / 101)

    nothing = evaluate_priors({}, dicts)
    assert nothing["missing_images"] == 3
    assert nothing["AR@100"] == 0.0 and nothing["AP"] == 0.0 and nothing["CorLoc"] == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="no 'annotations'"):
        evaluate_priors({}, [{"image_id": 1, "file_name": "a.jpg"}])
    with pytest.raises(ValueError, match="non-crowd"):
        evaluate_priors({}, [gt_record(1, [[0, 0, 5, 5]], crowd=(0,))])
    with pytest.raises(ValueError, match="twice"):
        evaluate_priors({}, [gt_record(1, [[0, 0, 5, 5]]), gt_record(1, [[0, 0, 5, 5]])])
    with pytest.raises(ValueError, match="shape"):
        evaluate_priors({1: (np.zeros((2, 3)), np.zeros(2))}, [gt_record(1, [[0, 0, 5, 5]])])
    with pytest.raises(ValueError, match="x2 < x1"):
        evaluate_priors({1: priors([[5, 0, 1, 5]], [1.0])}, [gt_record(1, [[0, 0, 5, 5]])])
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_priors({}, [gt_record(1, [[0, 0, 5, 5]])], max_dets=(0, 10))


def test_table_format():
    a = {"AR@1": 12.345, "AR@10": 40.0, "AR@30": 55.55, "AR@100": 60.0, "R50@30": 90.04, "AP": 5.25,
         "AP50": 17.0, "CorLoc": 33.333, "priors_per_image": 29.96}
    b = dict(a, **{"AR@1": 20.0, "CorLoc": 66.666})
    del b["AR@30"]
    lines = format_prior_quality_table([("v0", a), ("v1", b)]).splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["priors", "AR@1", "AR@10", "AR@30", "AR@100", "R50@30", "AP", "AP50", "CorLoc", "priors/img"]
    assert set(lines[1]) <= set("|-: ")
    row0 = [c.strip() for c in lines[2].strip("|").split("|")]
    row1 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row0 == ["v0", "12.3", "40.0", "55.5", "60.0", "90.0", "5.2", "17.0", "33.3", "30.0"]
    assert row1 == ["v1", "20.0", "40.0", "-", "60.0", "90.0", "5.2", "17.0", "66.7", "30.0"]
    with pytest.raises(ValueError):
        format_prior_quality_table([])


def test_tool_on_synthetic_bank(tmp_path, capsys):
    synth_args = ["--synthetic-root", str(tmp_path / "synth"), "--synthetic-num-train", "3",
                  "--synthetic-num-val", "1", "--synthetic-image-size", "64"]
    register_synthetic(root=tmp_path / "synth", num_train=3, num_val=1, image_size=64)
    dicts = DatasetCatalog.get("synth_train")
    ids, gt_boxes = [], []
    for d in dicts:
        ids.append(d["image_id"])
        gt_boxes.append(np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]))
    bank = PriorBank(tmp_path / "bank")
    bank.write_version(0, ids, gt_boxes, [np.ones(len(b)) for b in gt_boxes])  # perfect priors
    bank.write_version(1, ids[:2], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2)  # no priors, one image missing

    out_json = tmp_path / "q.json"
    rows = eval_priors.main(["--bank", str(tmp_path / "bank"), "--dataset", "synth_train", "--json", str(out_json)] + synth_args)
    assert [label for label, _ in rows] == ["v0", "v1"]
    assert rows[0][1]["AR@100"] == pytest.approx(100.0) and rows[0][1]["CorLoc"] == pytest.approx(100.0)
    assert rows[1][1]["AR@100"] == 0.0 and rows[1][1]["missing_images"] == 1
    captured = capsys.readouterr()
    assert "| v0 " in captured.out and "| v1 " in captured.out and "100.0" in captured.out
    assert "lacks 1 of the 3 images" in captured.err
    assert json.loads(out_json.read_text())["v0"]["AP"] == pytest.approx(100.0)

    rows = eval_priors.main(["--bank", str(tmp_path / "bank"), "--versions", "1", "--dataset", "synth_train"] + synth_args)
    assert [label for label, _ in rows] == ["v1"]

    # --soft-nms-sigma: each version also with re-ranked scores; a duplicate of a true box, scored above
    # the other true boxes, falls below them (boxes kept: the recall is the same)
    dup_boxes = [np.concatenate([b, b[:1] + 0.5]) for b in gt_boxes]
    dup_scores = [np.concatenate([np.linspace(1.0, 0.5, len(b)), [0.99]]) for b in gt_boxes]
    bank.write_version(2, ids, dup_boxes, dup_scores)
    rows = eval_priors.main(["--bank", str(tmp_path / "bank"), "--versions", "2", "--dataset", "synth_train",
                             "--soft-nms-sigma", "0.5"] + synth_args)
    assert [label for label, _ in rows] == ["v2", "v2 + Soft-NMS 0.5"]
    plain, snms = rows[0][1], rows[1][1]
    assert snms["AR@100"] == plain["AR@100"] == pytest.approx(100.0)
    assert max(len(b) for b in gt_boxes) > 1  # so the duplicate outranks a true box: a precision loss Soft-NMS undoes
    assert snms["AP"] > plain["AP"]
    want = eval_priors.soft_nms_version(bank.read(2), 0.5)
    top = max(want, key=lambda i: len(want[i][1]))
    assert want[top][1][-1] < want[top][1][0]  # the duplicate, decayed below its original

    with pytest.raises(SystemExit):
        eval_priors.main(["--bank", str(tmp_path / "bank"), "--dataset", "synth_train_unlabeled"] + synth_args)
    err = capsys.readouterr().err
    assert "has no annotations" in err and "synth_train" in err
    with pytest.raises(SystemExit):
        eval_priors.main(["--bank", str(tmp_path / "bank"), "--versions", "7", "--dataset", "synth_train"] + synth_args)
    assert "not in prior bank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_priors.main(["--bank", str(tmp_path / "bank"), "--dataset", "no_such_set"] + synth_args)
    assert "Unknown dataset" in capsys.readouterr().err
