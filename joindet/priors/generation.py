"""Run a model over images and turn its patch features into object priors (NCut); helpers to shard
the work over processes and gather the results."""
import logging
import time

import numpy as np
import torch

from detectron2.data import build_detection_test_loader
from detectron2.utils import comm

from .ncut import priors_from_features

__all__ = ["generate_ncut_priors", "gather_priors", "shard", "center_features"]

logger = logging.getLogger("joindet")


def shard(items):
    """This process's share of ``items`` (every world_size-th item, starting at the rank)."""
    return list(items)[comm.get_rank()::comm.get_world_size()]


def gather_priors(local):
    """local: dict image_id -> (boxes, scores) of this rank's shard. Returns the union over all ranks."""
    if comm.get_world_size() == 1:
        return local
    merged = {}
    for part in comm.all_gather(local):
        merged.update(part)
    return merged


def center_features(features, valid):
    """Subtract each image's mean feature over its valid patches. features: (N, h, w, c); valid: (N, h, w)."""
    w = valid.unsqueeze(-1).to(features.dtype)
    mean = (features * w).sum((1, 2), keepdim=True) / w.sum((1, 2), keepdim=True).clamp(min=1)
    return (features - mean) * w


@torch.no_grad()
def generate_ncut_priors(model, dataset_dicts, mapper, feature_fn, *, batch_size=4, num_workers=0, tau=0.2,
                         eps=1e-5, num_rounds=3, topk=30, nms_threshold=0.7, center=False):
    """Priors for every image of ``dataset_dicts`` from NCut on the patch features ``feature_fn`` returns.

    Args:
        model: the detector (unwrapped from DDP); put in eval mode for the pass and restored after.
        dataset_dicts: Detectron2 dicts with ``file_name``, ``height``, ``width``, ``image_id``.
        mapper: a test-time mapper (resize only).
        feature_fn: ``feature_fn(model, batched_inputs) -> (features (N, h, w, c), valid (N, h, w), sizes)``.
        tau, eps, num_rounds, topk, nms_threshold: see :func:`joindet.priors.ncut.priors_from_features`.
        center: subtract each image's mean feature first, so that the cosine of Eq. 1 measures how patches
            differ rather than the component they all share (encoder outputs share a large one).

    Returns:
        dict image_id -> (boxes (k, 4) float32 XYXY in original pixels, scores (k,) float32) for every
        image of ``dataset_dicts`` (this process only: shard with :func:`shard`, merge with
        :func:`gather_priors`).
    """
    loader = build_detection_test_loader(dataset=list(dataset_dicts), mapper=mapper, batch_size=batch_size,
                                         num_workers=num_workers,
                                         sampler=torch.utils.data.SequentialSampler(range(len(dataset_dicts))))
    was_training = model.training
    model.eval()
    local = {}
    start, total = time.perf_counter(), len(loader)
    try:
        for i, batch in enumerate(loader):
            feats, valid, _ = feature_fn(model, batch)
            if center:
                feats = center_features(feats, valid)
            sizes = [(x["height"], x["width"]) for x in batch]
            priors = priors_from_features(feats, sizes, valid_mask=valid, tau=tau, eps=eps, num_rounds=num_rounds,
                                          topk=topk, nms_threshold=nms_threshold)
            for x, (boxes, scores) in zip(batch, priors):
                local[x["image_id"]] = (np.asarray(boxes, np.float32), np.asarray(scores, np.float32))
            if comm.is_main_process() and (i + 1) % max(1, total // 5) == 0:
                elapsed = time.perf_counter() - start
                logger.info("NCut priors: %d/%d batches, %.1f s, ETA %.0f s", i + 1, total, elapsed,
                            elapsed / (i + 1) * (total - i - 1))
    finally:
        model.train(was_training)
    return local
