"""Run a model over images and turn its patch features into object priors (NCut); helpers to shard
the work over processes and publish the results as one bank version."""
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from detectron2.data import DatasetFromList, build_detection_test_loader
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm

from ..utils.progress import log_progress
from . import defaults as D
from .bank import FILTER_REASONS, check_priors, usable_priors
from .ncut import priors_from_features

__all__ = ["generate_ncut_priors", "ncut_priors_of_batch", "run_over_images", "priors_to_arrays", "publish_version",
           "shard", "center_features"]

_SHARD_ARRAYS = ("image_ids", "boxes", "scores", "offsets")

logger = logging.getLogger("joindet")


def shard(items):
    """This process's share of ``items`` (every world_size-th item, starting at the rank)."""
    return list(items)[comm.get_rank()::comm.get_world_size()]


def priors_to_arrays(priors):
    """dict image_id -> (boxes (k, 4), scores (k,)) as the concatenated arrays of a bank version:
    (image_ids int64 (n,) ascending, boxes float32 (N, 4), scores float32 (N,), offsets int64 (n + 1,)).
    Shapes are checked per image as ``PriorBank.write_version`` checks them."""
    ids = np.array(sorted(priors), dtype=np.int64)
    boxes, scores = [], []
    for i in ids.tolist():
        b, s = priors[i]
        b, s = check_priors(np.asarray(b, np.float32), np.asarray(s, np.float32), f"image {i}")
        boxes.append(b)
        scores.append(s)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in boxes], out=offsets[1:])
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    return ids, boxes, scores, offsets


def publish_version(bank, version, shard_arrays, info=None, overwrite=False):
    """Write bank version ``version`` from every rank's shard; every process of the run calls it.

    ``shard_arrays``: this rank's priors as :func:`priors_to_arrays` returns them (disjoint image ids over
    the ranks). On one process the version is written directly. On more, no rank gathers the priors: each
    writes its shard as ``.npy`` files into a staging folder inside the bank root (named by the main process
    ``.tmp-vNNNN-<pid>-shards-*``, so that ``PriorBank.recover`` removes it after a killed run), then the main
    process reads the shards memory-mapped, concatenates them and commits the version with
    ``PriorBank.write_version_arrays`` (atomic, as always), removes the staging folder, and all wait for
    it. ``info`` and ``overwrite`` are used by the main process only."""
    if comm.get_world_size() == 1:
        bank.write_version_arrays(version, *shard_arrays, info=info, overwrite=overwrite)
        return
    staging = None
    if comm.is_main_process():
        staging = str(bank.make_staging_dir(version))
    staging = Path([s for s in comm.all_gather(staging) if s is not None][0])  # a path, not priors
    try:
        write_shard(staging, comm.get_rank(), shard_arrays)
        comm.synchronize()
        if comm.is_main_process():
            commit_shards(bank, version, staging, comm.get_world_size(), info=info, overwrite=overwrite)
    finally:
        if comm.is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
    comm.synchronize()


def write_shard(staging, rank, shard_arrays):
    """Write one rank's shard (image_ids, boxes, scores, offsets) as ``rank<r>.<name>.npy`` into ``staging``."""
    for name, array in zip(_SHARD_ARRAYS, shard_arrays):
        with open(Path(staging) / f"rank{rank}.{name}.npy", "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)


def commit_shards(bank, version, staging, world_size, info=None, overwrite=False):
    """Concatenate the ``world_size`` shards in ``staging`` (memory-mapped) and write them as ``version``."""
    parts = [[np.load(Path(staging) / f"rank{r}.{name}.npy", mmap_mode="r", allow_pickle=False)
              for name in _SHARD_ARRAYS] for r in range(world_size)]
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    boxes = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False).reshape(-1, 4)
    scores = np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False).reshape(-1)
    offsets = np.zeros(ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.concatenate([np.diff(np.asarray(p[3], np.int64)) for p in parts]), out=offsets[1:])
    del parts
    return bank.write_version_arrays(version, ids, boxes, scores, offsets, info=info, overwrite=overwrite)


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


def ncut_priors_of_batch(features, valid, batch, *, center=D.NCUT_CENTER, **ncut):
    """NCut priors of a batch of images from their patch features ``features`` (N, h, w, c) and ``valid``
    (N, h, w), in each image's original pixels (``batch``: the mapped inputs, with ``height`` and ``width``).
    ``center``: see :func:`generate_ncut_priors`; ``ncut``: the arguments of :func:`priors_from_features`."""
    if center:
        features = center_features(features, valid)
    sizes = [(x["height"], x["width"]) for x in batch]
    return priors_from_features(features, sizes, valid_mask=valid, **ncut)


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
    usable image (this process only: shard with :func:`shard`, publish with :func:`publish_version`); progress
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


def generate_ncut_priors(model, dataset_dicts, mapper, feature_fn, *, batch_size=D.NCUT_BATCH_SIZE, num_workers=0,
                         tau=D.NCUT_TAU, eps=D.NCUT_EPS, num_rounds=D.NCUT_NUM_ROUNDS, topk=D.TOPK,
                         nms_threshold=D.NCUT_NMS_THRESHOLD, center=D.NCUT_CENTER, solver=D.NCUT_SOLVER,
                         tau_quantile=D.NCUT_TAU_QUANTILE):
    """Priors for every image of ``dataset_dicts`` from NCut on the patch features ``feature_fn`` returns.

    Args:
        model: the detector (unwrapped from DDP); put in eval mode for the pass and restored after.
        dataset_dicts: Detectron2 dicts with ``file_name``, ``height``, ``width``, ``image_id``.
        mapper: a test-time mapper (resize only).
        feature_fn: ``feature_fn(model, batched_inputs) -> (features (N, h, w, c), valid (N, h, w), sizes)``.
        tau, eps, num_rounds, topk, nms_threshold, solver, tau_quantile: see
            :func:`joindet.priors.ncut.priors_from_features`.
        center: subtract each image's mean feature first, so that the cosine of Eq. 1 measures how patches
            differ rather than the component they all share (encoder outputs share a large one).

    Returns: as :func:`run_over_images`.
    """
    def ncut(m, batch):
        feats, valid, _ = feature_fn(m, batch)
        return ncut_priors_of_batch(feats, valid, batch, center=center, tau=tau, eps=eps, num_rounds=num_rounds,
                                    topk=topk, nms_threshold=nms_threshold, solver=solver, tau_quantile=tau_quantile)

    return run_over_images(model, dataset_dicts, mapper, ncut, batch_size=batch_size, num_workers=num_workers,
                           what="NCut priors")
