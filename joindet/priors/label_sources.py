"""
Diagnostic version-0 sources that **read the labels**: ceilings that bound what priors can give a
pretraining, never a method (no default config uses them, and a comparison names their rows as such).

* ``"gt_boxes"`` (``GroundTruthBoxSource``): each image's ground-truth boxes, class-agnostic, as priors:
  what perfect priors (tight, complete, on every object) give;
* ``"ss_gt_filtered"`` (``FilteredSelectiveSearchSource``): selective search's boxes, kept only where
  one overlaps a ground-truth box at IoU >= a threshold: the best that any refresh which only re-ranks or
  drops selective-search boxes can reach.

The labels come from a registered dataset with the same images (``JOINDET.PRIORS.EVAL_DATASET``, the set
that prior quality is scored against), matched by ``image_id``; an image of the pretraining set that the
labelled set lacks, or whose file differs, is an error naming it.
"""
import numbers
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import BoxMode, pairwise_iou, Boxes

from . import defaults as D
from .selective_search import SelectiveSearchSource
from .sources import PriorList, register_prior_source

__all__ = ["labelled_boxes", "GroundTruthBoxSource", "FilteredSelectiveSearchSource"]


def labelled_boxes(dataset_dicts: Sequence[dict], labels_dataset: str) -> List[np.ndarray]:
    """
    The ground-truth boxes (float32 (n, 4), XYXY absolute, crowd boxes left out) of each of ``dataset_dicts``,
    read from the registered dataset ``labels_dataset`` by ``image_id``.

    Raises:
        ValueError: ``labels_dataset`` is empty or not registered, or it lacks one of the images (or holds
            it under another file name).
    """
    from detectron2.data import DatasetCatalog

    if not isinstance(labels_dataset, str) or not labels_dataset:
        raise ValueError("a label-reading prior source needs the labelled twin of the pretraining set: "
                         "set JOINDET.PRIORS.EVAL_DATASET (e.g. synth_train)")
    if labels_dataset not in DatasetCatalog.list():
        raise ValueError(f"JOINDET.PRIORS.EVAL_DATASET: dataset {labels_dataset!r} is not registered")
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(labels_dataset)}
    out = []
    for d in dataset_dicts:
        labelled = by_id.get(d["image_id"])
        if labelled is None:
            raise ValueError(f"image {d['image_id']} ({d.get('file_name')}) is not in the labelled set "
                             f"{labels_dataset!r}: it must hold the same images as the pretraining set")
        if "file_name" in d and labelled["file_name"] != d["file_name"]:
            raise ValueError(f"image {d['image_id']} is {d['file_name']} in the pretraining set but "
                             f"{labelled['file_name']} in the labelled set {labels_dataset!r}")
        boxes = [BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
                 for a in labelled.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append(boxes[keep])
    return out


@register_prior_source("gt_boxes")
class GroundTruthBoxSource:
    """
    Diagnostic (reads labels): each image's class-agnostic ground-truth boxes as its priors, all scored 1.0.

    Args:
        labels_dataset: the registered labelled dataset with the same images (matched by ``image_id``).
    """

    @configurable
    def __init__(self, labels_dataset: str):
        self.labels_dataset = labels_dataset

    @classmethod
    def from_config(cls, cfg, mapper=None) -> Dict[str, Any]:
        return {"labels_dataset": cfg.JOINDET.PRIORS.EVAL_DATASET}

    def cache_key(self) -> Dict[str, Any]:
        return {"labels_dataset": self.labels_dataset, "impl": 1}

    def __repr__(self) -> str:
        return f"GroundTruthBoxSource(labels_dataset={self.labels_dataset!r})"

    def __call__(self, dataset_dicts: Sequence[dict], model=None) -> PriorList:
        return [(boxes, np.ones((boxes.shape[0],), np.float32))
                for boxes in labelled_boxes(dataset_dicts, self.labels_dataset)]


@register_prior_source("ss_gt_filtered")
class FilteredSelectiveSearchSource(SelectiveSearchSource):
    """
    Diagnostic (reads labels): selective search's boxes (``SelectiveSearchSource``, the same settings), kept
    only where one overlaps a ground-truth box at IoU >= ``iou_threshold``, in selective search's order and
    with its scores.

    Args:
        labels_dataset: the registered labelled dataset with the same images.
        iou_threshold: the overlap with some ground-truth box that keeps a box.
        topk, min_side, num_workers, mode, start_method: as in ``SelectiveSearchSource``.
    """

    @configurable
    def __init__(self, labels_dataset: str, iou_threshold: float = 0.5, topk: int = D.TOPK,
                 min_side: Optional[int] = D.SELECTIVE_SEARCH_MIN_SIDE,
                 num_workers: int = D.SELECTIVE_SEARCH_NUM_WORKERS, mode: str = "fast",
                 start_method: Optional[str] = None):
        super().__init__(topk=topk, min_side=min_side, num_workers=num_workers, mode=mode,
                         start_method=start_method)
        if (isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real)
                or not 0.0 < iou_threshold <= 1.0):
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.labels_dataset, self.iou_threshold = labels_dataset, float(iou_threshold)

    @classmethod
    def from_config(cls, cfg, mapper=None) -> Dict[str, Any]:
        return {**SelectiveSearchSource.from_config(cfg, mapper), "labels_dataset": cfg.JOINDET.PRIORS.EVAL_DATASET}

    def cache_key(self) -> Dict[str, Any]:
        return {**super().cache_key(), "labels_dataset": self.labels_dataset, "iou_threshold": self.iou_threshold}

    def __repr__(self) -> str:
        return (f"FilteredSelectiveSearchSource(labels_dataset={self.labels_dataset!r}, "
                f"iou_threshold={self.iou_threshold}, topk={self.topk}, min_side={self.min_side})")

    def __call__(self, dataset_dicts: Sequence[dict], model=None) -> PriorList:
        gt = labelled_boxes(dataset_dicts, self.labels_dataset)  # first: a missing label fails before the search
        out = []
        for (boxes, scores), truth in zip(super().__call__(dataset_dicts, model), gt):
            if boxes.shape[0] == 0 or truth.shape[0] == 0:
                keep = np.zeros((boxes.shape[0],), bool)
            else:
                iou = pairwise_iou(Boxes(torch.from_numpy(boxes)), Boxes(torch.from_numpy(truth)))
                keep = (iou.max(dim=1).values >= self.iou_threshold).numpy()
            out.append((boxes[keep], scores[keep]))
        return out
