"""Run a model over images and turn its patch features into object priors (NCut); helpers to shard
the work over processes and gather the results."""
import logging
import time

import numpy as np
import torch

from detectron2.data import DatasetFromList, build_detection_test_loader
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm

from ..utils.progress import log_progress
from .bank import FILTER_REASONS, usable_priors
from .ncut import priors_from_features

__all__ = ["generate_ncut_priors", "run_over_images", "gather_priors", "shard", "center_features"]

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


def _numpy(x):
    """float32 numpy copy of a tensor (any device) or array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, np.float32)


def center_features(features, valid):
    """Subtract each image's mean feature over its valid patches. features: (N, h, w, c); valid: (N, h, w)."""
    w = valid.unsqueeze(-1).to(features.dtype)
    mean = (features * w).sum((1, 2), keepdim=True) / w.sum((1, 2), keepdim=True).clamp(min=1)
    return (features - mean) * w


@torch.no_grad()
def run_over_images(model, dataset_dicts, mapper, fn, *, batch_size=4, num_workers=0, what="priors"):
    """Run ``fn(model, batch) -> [(boxes, scores)] per image`` over every image of ``dataset_dicts``, the
    model in eval mode (restored after), images read by ``mapper`` (a test-time mapper) in batches.

    An image the mapper skips (it returns None for an unusable file, and counts and logs it) gets no
    entry: the images are served as an iterable dataset, from which Detectron2's ``MapDataset`` drops a
    None instead of mapping a random other image in its place. The number of such images is logged.
    Priors with non-finite values or no area (``bank.usable_priors``) are dropped here, counted and logged:
    the Box Smooth Module refuses them, and the bank would not store them.

    Returns dict image_id -> (boxes (k, 4) float32 XYXY in original pixels, scores (k,) float32) for every
    usable image (this process only: shard with :func:`shard`, merge with :func:`gather_priors`); progress
    is logged under ``what``."""
    dicts = list(dataset_dicts)
    images = ToIterableDataset(DatasetFromList(dicts, copy=False), torch.utils.data.SequentialSampler(dicts))
    loader = build_detection_test_loader(dataset=images, mapper=mapper, batch_size=batch_size,
                                         num_workers=num_workers)
    was_training = model.training
    model.eval()
    local = {}
    dropped = dict.fromkeys(FILTER_REASONS, 0)
    start, total = time.perf_counter(), len(loader)
    try:
        for i, batch in enumerate(loader):
            for x, (boxes, scores) in zip(batch, fn(model, batch)):
                boxes, scores = _numpy(boxes).reshape(-1, 4), _numpy(scores).reshape(-1)
                keep, counts = usable_priors(boxes, scores)
                for reason, n in counts.items():
                    dropped[reason] += n
                local[x["image_id"]] = (boxes[keep], scores[keep])
            if comm.is_main_process():
                log_progress(what, i + 1, total, start, unit="batches")
    finally:
        model.train(was_training)
    if any(dropped.values()):
        logger.warning(f"{what}: dropped {sum(dropped.values())} priors "
                       f"({', '.join(f'{k}: {n}' for k, n in dropped.items())})")
    if len(local) < len(dicts):
        logger.warning(f"{what}: {len(dicts) - len(local)} of {len(dicts)} images could not be used "
                       "(skipped by the mapper, see its warnings) and get no result")
    return local


def generate_ncut_priors(model, dataset_dicts, mapper, feature_fn, *, batch_size=4, num_workers=0, tau=0.2,
                         eps=1e-5, num_rounds=3, topk=30, nms_threshold=0.7, center=False, solver="lanczos"):
    """Priors for every image of ``dataset_dicts`` from NCut on the patch features ``feature_fn`` returns.

    Args:
        model: the detector (unwrapped from DDP); put in eval mode for the pass and restored after.
        dataset_dicts: Detectron2 dicts with ``file_name``, ``height``, ``width``, ``image_id``.
        mapper: a test-time mapper (resize only).
        feature_fn: ``feature_fn(model, batched_inputs) -> (features (N, h, w, c), valid (N, h, w), sizes)``.
        tau, eps, num_rounds, topk, nms_threshold, solver: see :func:`joindet.priors.ncut.priors_from_features`.
        center: subtract each image's mean feature first, so that the cosine of Eq. 1 measures how patches
            differ rather than the component they all share (encoder outputs share a large one).

    Returns: as :func:`run_over_images`.
    """
    def ncut(m, batch):
        feats, valid, _ = feature_fn(m, batch)
        if center:
            feats = center_features(feats, valid)
        sizes = [(x["height"], x["width"]) for x in batch]
        return priors_from_features(feats, sizes, valid_mask=valid, tau=tau, eps=eps, num_rounds=num_rounds,
                                    topk=topk, nms_threshold=nms_threshold, solver=solver)

    return run_over_images(model, dataset_dicts, mapper, ncut, batch_size=batch_size, num_workers=num_workers,
                           what="NCut priors")
