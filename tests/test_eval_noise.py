"""The bootstrap of the evaluation images (joindet.evaluation.bootstrap, joindet.tools.eval_noise)."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from joindet.evaluation.bootstrap import bootstrap_ap, bootstrap_ap_sizes, coco_ap, resampled_set
from joindet.tools import eval_noise

# three 100 x 100 images; image 1 has two boxes, image 2 one, image 3 one
GT_BOXES = {1: [[10, 10, 30, 30], [50, 50, 40, 40]], 2: [[5, 5, 50, 60]], 3: [[20, 30, 30, 20]]}
DETECTIONS = [  # image 1: one exact, one off; image 2: exact; image 3: a miss and a false positive
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [60, 60, 40, 40], "score": 0.8},
    {"image_id": 2, "category_id": 1, "bbox": [5, 5, 50, 60], "score": 0.7},
    {"image_id": 3, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.95},
]


def _gt_dict(images):
    """COCO ground truth with the given (new id, source id) images: a source image can appear twice."""
    anns = []
    for new_id, source in images:
        for box in GT_BOXES[source]:
            anns.append({"id": len(anns) + 1, "image_id": new_id, "category_id": 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    return {"images": [{"id": i, "width": 100, "height": 100} for i, _ in images], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}


def _coco(data):
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _by_image(detections):
    out = {}
    for d in detections:
        out.setdefault(d["image_id"], []).append(d)
    return out


def test_an_image_drawn_twice_counts_twice():
    gt = _coco(_gt_dict([(1, 1), (2, 2), (3, 3)]))
    # reference: the drawn images written out by hand as distinct images, their detections copied
    copies = [(10, 1), (11, 1), (12, 3)]
    ref_gt = _coco(_gt_dict(copies))
    ref_dets = [{**d, "image_id": new} for new, src in copies for d in DETECTIONS if d["image_id"] == src]
    expected = coco_ap(ref_gt, ref_dets)
    assert coco_ap(*resampled_set(gt, _by_image(DETECTIONS), [1, 1, 3])) == pytest.approx(expected)
    assert expected != pytest.approx(coco_ap(*resampled_set(gt, _by_image(DETECTIONS), [1, 3])))  # repeats count
    assert coco_ap(*resampled_set(gt, _by_image(DETECTIONS), [1, 2, 3])) == pytest.approx(coco_ap(gt, DETECTIONS))


def test_bootstrap_spread_and_determinism():
    gt = _coco(_gt_dict([(1, 1), (2, 2), (3, 3)]))
    perfect = [{"image_id": i, "category_id": 1, "bbox": b, "score": 1.0} for i, boxes in GT_BOXES.items() for b in boxes]
    boot = bootstrap_ap(gt, perfect, resamples=5)
    assert boot["ap"] == pytest.approx(100.0) and boot["std"] == pytest.approx(0.0, abs=1e-9)
    noisy = bootstrap_ap(gt, DETECTIONS, num_images=3, resamples=20, seed=3)
    assert noisy["std"] > 0 and len(noisy["aps"]) == 20
    assert bootstrap_ap(gt, DETECTIONS, num_images=3, resamples=20, seed=3)["aps"] == noisy["aps"]
    # each resampled AP is the AP on that draw
    rng = np.random.default_rng(3)
    first = rng.choice([1, 2, 3], size=3, replace=True)
    assert noisy["aps"][0] == pytest.approx(coco_ap(*resampled_set(gt, _by_image(DETECTIONS), first)), nan_ok=True)
    with pytest.raises(ValueError, match="detections on images the ground truth lacks: \\[9\\]"):
        bootstrap_ap(gt, [{**DETECTIONS[0], "image_id": 9}])
    with pytest.raises(ValueError, match="resamples must be an integer >= 2"):
        bootstrap_ap(gt, DETECTIONS, resamples=1)


def test_several_sizes_in_one_call_equal_one_call_per_size():
    gt = _coco(_gt_dict([(1, 1), (2, 2), (3, 3)]))
    both = bootstrap_ap_sizes(gt, DETECTIONS, [2, None], resamples=6, seed=5)
    assert [s["num_images"] for s in both["by_size"]] == [2, 3]
    for stat, n in zip(both["by_size"], [2, None]):
        alone = bootstrap_ap(gt, DETECTIONS, num_images=n, resamples=6, seed=5)
        assert stat["aps"] == alone["aps"] and both["ap"] == alone["ap"]


def test_eval_noise_cli_pairs_files_on_the_same_draws(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(_gt_dict([(1, 1), (2, 2), (3, 3)])))
    (tmp_path / "a.json").write_text(json.dumps(DETECTIONS))
    (tmp_path / "b.json").write_text(json.dumps(DETECTIONS))
    result = eval_noise.main(["--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "a.json"),
                              str(tmp_path / "b.json"), "--num-images", "2", "3", "--resamples", "10",
                              "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == result
    a, b = result["files"]
    assert a["by_size"]["3"]["std"] == pytest.approx(b["by_size"]["3"]["std"])
    assert b["by_size"]["2"]["paired_std_vs_first"] == 0.0  # the same detections on the same draws
    assert "| 2 |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        eval_noise.main(["--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "bad.json")])
    assert "holds dict, not a list of detections" in capsys.readouterr().err
