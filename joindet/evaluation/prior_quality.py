"""
How good are a set of object priors? Class-agnostic recall, precision and CorLoc against a
labelled dataset's boxes, computed with pycocotools so the numbers are exactly COCO-style.

Every ground-truth box is the one class "object" (crowd boxes are dropped); every prior is a
detection of that class with the prior's score. Recall (AR) says whether the priors cover the
objects; precision (AP) and CorLoc say whether the highest-scoring priors *are* objects rather
than background and parts, which is what refreshed priors should improve on.
"""
import contextlib
import io
import numbers
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import BoxMode
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate
from torchvision.ops import box_iou

from ..priors.bank import PriorVersion, check_priors

__all__ = ["evaluate_priors", "format_prior_quality_table", "gt_boxes_xywh"]

PriorsLike = Union[PriorVersion, Mapping[int, Tuple[np.ndarray, np.ndarray]]]

_CORLOC_IOU = 0.5
_TABLE_COLUMNS = (
    ("AR@1", "AR@1"),
    ("AR@10", "AR@10"),
    ("AR@30", "AR@30"),
    ("AR@100", "AR@100"),
    ("R50@30", "R50@30"),
    ("AP", "AP"),
    ("AP50", "AP50"),
    ("CorLoc", "CorLoc"),
    ("priors/img", "priors_per_image"),
)


def _check_max_dets(max_dets) -> List[int]:
    try:
        values = list(max_dets)
    except TypeError:
        raise ValueError(f"max_dets must be a sequence of positive integers, got {max_dets!r}") from None
    if not values:
        raise ValueError("max_dets must not be empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"max_dets must be positive integers, got {max_dets!r}")
    return sorted({int(v) for v in values})


def gt_boxes_xywh(record: dict) -> np.ndarray:
    """The non-crowd boxes of one Detectron2 dataset dict, float64 (g, 4) XYWH absolute."""
    boxes = []
    for ann in record.get("annotations", ()):
        if ann.get("iscrowd", 0):
            continue
        if "bbox" not in ann or "bbox_mode" not in ann:
            raise ValueError(
                f"annotation of image {record.get('image_id')!r} lacks 'bbox' or 'bbox_mode': {ann!r}"
            )
        mode = BoxMode(ann["bbox_mode"])
        if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
            raise ValueError(
                f"annotation of image {record.get('image_id')!r} has bbox_mode {mode.name}; "
                "only XYXY_ABS and XYWH_ABS are supported"
            )
        bbox = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYWH_ABS)
        boxes.append(bbox)
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(out)) or np.any(out[:, 2:] < 0):
        raise ValueError(
            f"image {record.get('image_id')!r} has a non-finite or negative-size ground-truth box"
        )
    return out


def _priors_of(priors: PriorsLike, image_id) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(boxes float64 (k, 4) XYXY, scores float64 (k,)) of one image, or None when absent."""
    if isinstance(priors, PriorVersion):
        if image_id not in priors:
            return None
        boxes, scores = priors.get(image_id)
    else:
        if image_id not in priors:
            return None
        entry = priors[image_id]
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(
                f"priors[{image_id!r}] must be a (boxes, scores) pair, got {type(entry).__name__}"
            )
        boxes, scores = entry
    return check_priors(np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64),
                        f"image {image_id!r}", valid=True)


def _top1_hits(top_box_xyxy: np.ndarray, gt_xywh: np.ndarray) -> bool:
    """Whether one XYXY box has IoU >= 0.5 with any of the (g, 4) XYWH ground-truth boxes."""
    gt_xyxy = gt_xywh.copy()
    gt_xyxy[:, 2:] += gt_xyxy[:, :2]
    iou = box_iou(torch.from_numpy(top_box_xyxy[None]), torch.from_numpy(gt_xyxy))
    return bool((iou >= _CORLOC_IOU).any())


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' convention: mean over entries > -1 (-1 marks 'no ground truth'), as percent."""
    values = values[values > -1]
    return float(np.mean(values)) * 100.0 if values.size else 0.0


def evaluate_priors(
    priors: PriorsLike,
    dataset_dicts: Sequence[dict],
    max_dets: Iterable[int] = (1, 10, 30, 100),
) -> Dict[str, float]:
    """
    Class-agnostic quality of a set of object priors against a labelled dataset.

    Args:
        priors: a ``PriorVersion`` or a mapping image_id -> (boxes (k, 4) XYXY absolute, scores
            (k,)). Images of ``dataset_dicts`` that it lacks are evaluated with zero priors and
            counted in ``missing_images``; images it has beyond ``dataset_dicts`` are ignored.
        dataset_dicts: Detectron2 dataset dicts with ``image_id`` and ``annotations`` (``bbox`` +
            ``bbox_mode``, XYXY_ABS or XYWH_ABS); ``iscrowd`` boxes are skipped, classes ignored.
        max_dets: the numbers of top-scoring priors per image at which recall is measured; AP
            uses the largest.

    Returns:
        dict with, in percent: ``AR@k`` for each k in ``max_dets`` (COCO AR: recall averaged over
        IoU 0.5:0.05:0.95, all areas), ``R50@k`` (recall at IoU 0.5 with k priors), ``AP`` and
        ``AP50`` (class-agnostic COCO precision of the scored priors, max(max_dets) per image),
        ``CorLoc`` (images whose top-scoring prior has IoU >= 0.5 with some box, among images
        with at least one box); and ``priors_per_image`` (mean count over the dataset's images,
        missing ones as 0), ``num_images``, ``missing_images``.

    Raises:
        ValueError: no image has annotations, no non-crowd box at all, duplicate or missing
            image ids, malformed boxes.
    """
    max_dets = _check_max_dets(max_dets)
    dataset_dicts = list(dataset_dicts)
    if not dataset_dicts:
        raise ValueError("dataset_dicts is empty: nothing to evaluate the priors against")
    if not any("annotations" in d for d in dataset_dicts):
        raise ValueError(
            "dataset_dicts have no 'annotations' (an unlabelled dataset?); prior quality needs "
            "ground-truth boxes"
        )

    images, gt_anns, dets = [], [], []
    seen = set()
    num_priors, missing, corloc_hits, corloc_images = 0, 0, 0, 0
    for record in dataset_dicts:
        if "image_id" not in record:
            raise ValueError(f"dataset dict without 'image_id': {record.get('file_name', record)!r}")
        image_id = record["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
            raise ValueError(f"image ids must be integers (as in the prior bank), got {image_id!r}")
        image_id = int(image_id)
        if image_id in seen:
            raise ValueError(f"image id {image_id!r} appears twice in dataset_dicts")
        seen.add(image_id)
        image = {"id": image_id}
        if "height" in record and "width" in record:
            image.update(height=record["height"], width=record["width"])
        images.append(image)

        gt = gt_boxes_xywh(record)
        for box in gt:
            gt_anns.append({
                "id": len(gt_anns) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": box.tolist(),
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
            })

        found = _priors_of(priors, image_id)
        if found is None:
            missing += 1
            boxes, scores = np.zeros((0, 4)), np.zeros((0,))
        else:
            boxes, scores = found
        num_priors += boxes.shape[0]
        if boxes.shape[0]:
            # pycocotools' (N, 7) result format: image_id, x, y, w, h, score, category.
            rows = np.empty((boxes.shape[0], 7), dtype=np.float64)
            rows[:, 0] = image_id
            rows[:, 1:3] = boxes[:, :2]
            rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
            rows[:, 5] = scores
            rows[:, 6] = 1
            dets.append(rows)
        if gt.shape[0]:
            corloc_images += 1
            if boxes.shape[0]:
                # COCOeval ranks by score with a stable sort: the same top-1 on ties.
                top = int(np.argsort(-scores, kind="mergesort")[0])
                corloc_hits += _top1_hits(boxes[top], gt)

    if not gt_anns:
        raise ValueError(
            f"none of the {len(dataset_dicts)} images has a non-crowd ground-truth box; prior "
            "quality is undefined"
        )

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(np.concatenate(dets))
        else:  # loadRes cannot take an empty result list
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": [], "categories": coco_gt.dataset["categories"]}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.params.areaRng = [coco_eval.params.areaRng[0]]  # "all" only
        coco_eval.params.areaRngLbl = ["all"]
        coco_eval.evaluate()
        coco_eval.accumulate()

    recall = coco_eval.eval["recall"]  # (T, K=1, A=1, M): -1 where there is no ground truth
    precision = coco_eval.eval["precision"]  # (T, R, K=1, A=1, M)
    iou_thrs = coco_eval.params.iouThrs
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    results: Dict[str, float] = {}
    for m, k in enumerate(max_dets):
        results[f"AR@{k}"] = _mean_valid(recall[:, 0, 0, m])
    for m, k in enumerate(max_dets):
        results[f"R50@{k}"] = _mean_valid(recall[t50, 0, 0, m : m + 1])
    results["AP"] = _mean_valid(precision[:, :, 0, 0, -1])
    results["AP50"] = _mean_valid(precision[t50, :, 0, 0, -1])
    results["CorLoc"] = 100.0 * corloc_hits / corloc_images
    results["priors_per_image"] = num_priors / len(dataset_dicts)
    results["num_images"] = len(dataset_dicts)
    results["missing_images"] = missing
    return results


def format_prior_quality_table(rows: Sequence[Tuple[str, Mapping[str, float]]]) -> str:
    """
    A Markdown (pipe) table of ``evaluate_priors`` results, one row per label (e.g. "v0", "v1").

    Columns: AR@1 AR@10 AR@30 AR@100 R50@30 AP AP50 CorLoc priors/img, to one decimal; a value a
    result lacks (e.g. AR@30 when 30 was not in ``max_dets``) is shown as "-".
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to tabulate")
    table = []
    for entry in rows:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"each row must be a (label, results) pair, got {entry!r}")
        label, result = entry
        line = [str(label)]
        for _, key in _TABLE_COLUMNS:
            value = result.get(key)
            line.append("-" if value is None else f"{float(value):.1f}")
        table.append(line)
    headers = ["priors"] + [title for title, _ in _TABLE_COLUMNS]
    return tabulate(
        table, headers=headers, tablefmt="pipe", disable_numparse=True,
        colalign=("left",) + ("right",) * len(_TABLE_COLUMNS),
    )
