"""The diagnostic version-0 sources that read the labels: gt_boxes and ss_gt_filtered."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from PIL import Image
from torchvision.ops import box_iou

from joindet.config import add_joindet_config
from joindet.priors.label_sources import FilteredSelectiveSearchSource, GroundTruthBoxSource, labelled_boxes
from joindet.priors.selective_search import selective_search_boxes
from joindet.priors.sources import PRIOR_SOURCE_REGISTRY, build_prior_source_from_cfg

RECTS = [(20, 15, 60, 55), (90, 40, 150, 100), (30, 70, 70, 110)]  # XYXY
COLOURS = [(230, 20, 20), (20, 20, 230), (240, 240, 30)]


def _image(shift):
    yy, xx = np.mgrid[0:120, 0:160]
    image = np.stack([xx * 200 // 160, yy * 200 // 120, np.full_like(xx, 110)], -1).astype(np.uint8)
    for (x1, y1, x2, y2), colour in zip(RECTS, COLOURS):
        image[y1:y2, x1 + shift:x2 + shift] = colour
    return image


@pytest.fixture
def labelled_set(tmp_path):
    """Two images registered twice, as a pretraining set (no labels) and its labelled twin (XYWH boxes,
    one crowd box); yields (name of the labelled set, the unlabelled dicts, the images)."""
    images, unlabelled, labelled = [_image(0), _image(6)], [], []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        record = {"file_name": str(path), "height": 120, "width": 160, "image_id": 7 + i}
        unlabelled.append(dict(record))
        anns = [{"bbox": [x1 + 6 * i, y1, x2 - x1, y2 - y1], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
                for x1, y1, x2, y2 in RECTS[:2]]
        anns.append({"bbox": [0, 0, 160, 120], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 1})
        labelled.append({**record, "annotations": anns})
    name = f"label_sources_test_{tmp_path.name}"
    DatasetCatalog.register(name, lambda: labelled)
    yield name, unlabelled, images
    DatasetCatalog.remove(name)


def test_gt_boxes_are_the_class_agnostic_non_crowd_boxes_in_xyxy(labelled_set):
    name, dicts, _ = labelled_set
    priors = GroundTruthBoxSource(labels_dataset=name)(dicts)
    assert len(priors) == 2
    for i, (boxes, scores) in enumerate(priors):
        expected = np.asarray([(x1 + 6 * i, y1, x2 + 6 * i, y2) for x1, y1, x2, y2 in RECTS[:2]], np.float32)
        np.testing.assert_array_equal(boxes, expected)  # the crowd box is left out
        assert scores.dtype == np.float32 and scores.tolist() == [1.0, 1.0]


def test_ss_gt_filtered_keeps_exactly_the_selective_search_boxes_that_overlap_a_label(labelled_set):
    name, dicts, images = labelled_set
    source = FilteredSelectiveSearchSource(labels_dataset=name, iou_threshold=0.5, topk=40, min_side=None,
                                           num_workers=0)
    for (boxes, scores), image, truth in zip(source(dicts), images, labelled_boxes(dicts, name)):
        all_boxes, all_scores = selective_search_boxes(image, topk=40, min_side=None)  # PNG is lossless
        best = box_iou(torch.from_numpy(all_boxes), torch.from_numpy(truth)).max(dim=1).values.numpy()
        keep = best >= 0.5
        assert 0 < keep.sum() < len(keep)  # the check is not vacuous: some boxes go, some stay
        np.testing.assert_array_equal(boxes, all_boxes[keep])  # selective search's order and scores
        np.testing.assert_array_equal(scores, all_scores[keep])
    assert source.cache_key()["iou_threshold"] == 0.5 and source.cache_key()["labels_dataset"] == name


def test_label_sources_refuse_missing_labels(labelled_set):
    name, dicts, _ = labelled_set
    with pytest.raises(ValueError, match="set JOINDET.PRIORS.EVAL_DATASET"):
        GroundTruthBoxSource(labels_dataset="")(dicts)
    with pytest.raises(ValueError, match="'no_such_set' is not registered"):
        GroundTruthBoxSource(labels_dataset="no_such_set")(dicts)
    stranger = [*dicts, {**dicts[0], "image_id": 99}]
    with pytest.raises(ValueError, match="image 99 .* is not in the labelled set"):
        GroundTruthBoxSource(labels_dataset=name)(stranger)
    renamed = [{**dicts[0], "file_name": "/elsewhere/0.png"}]
    with pytest.raises(ValueError, match="is /elsewhere/0.png in the pretraining set but"):
        FilteredSelectiveSearchSource(labels_dataset=name, num_workers=0)(renamed)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        FilteredSelectiveSearchSource(labels_dataset=name, iou_threshold=0.0)


def test_label_sources_are_built_from_the_config(labelled_set):
    from detectron2.config import get_cfg

    name, dicts, _ = labelled_set
    assert {"gt_boxes", "ss_gt_filtered"} <= {n for n, _ in PRIOR_SOURCE_REGISTRY}
    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_list(["JOINDET.PRIORS.INIT_SOURCE", "ss_gt_filtered", "JOINDET.PRIORS.EVAL_DATASET", name,
                         "JOINDET.PRIORS.TOPK", "12", "JOINDET.PRIORS.NUM_WORKERS", "0"])
    source = build_prior_source_from_cfg(cfg, mapper=None)
    assert isinstance(source, FilteredSelectiveSearchSource)
    assert (source.labels_dataset, source.topk, source.num_workers) == (name, 12, 0)
    cfg.JOINDET.PRIORS.INIT_SOURCE = "gt_boxes"
    assert build_prior_source_from_cfg(cfg, mapper=None).labels_dataset == name
