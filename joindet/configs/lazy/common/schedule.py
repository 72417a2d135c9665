# Learning-rate schedules as LazyConfigs, and the one place where epochs become iterations.
#
# Epochs to iterations: one epoch is ceil(num_images / total_batch_size) iterations, where
# total_batch_size is the batch summed over all processes (dataloader.train.total_batch_size). E.g.
# COCO train2017 keeps 117,266 of its 118,287 images once those without boxes are dropped; at batch 32
# that is ceil(117266 / 32) = 3,665 iterations per epoch, so the paper's 50 epochs are 183,250
# iterations and its lr drop at epoch 40 is iteration 146,600 (the same numbers as
# joindet.config.resolve_epochs gives the yacs route).
#
# The schedule is scale-invariant: Detectron2 evaluates it at the fraction iteration / train.max_iter,
# so the drops are really "at drop / total of the run". Overriding train.max_iter alone (e.g. a short
# run) keeps the drop at the same fraction of training instead of leaving it past the end.
import math

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def iters_per_epoch(num_images, total_batch_size):
    """Iterations of one epoch: ceil(num_images / total_batch_size)."""
    if num_images < 1 or total_batch_size < 1:
        raise ValueError(
            f"num_images ({num_images}) and total_batch_size ({total_batch_size}) must both be >= 1"
        )
    return math.ceil(num_images / total_batch_size)


def step_lr_multiplier(total_iters, drop_iters=(), gamma=0.1, warmup_iters=0, warmup_factor=0.001):
    """LazyConfig of an lr multiplier: 1.0, times ``gamma`` at each of ``drop_iters``, after a linear
    warm-up over the first ``warmup_iters`` from ``warmup_factor`` (none by default).

    ``total_iters`` and ``drop_iters`` are in the same unit (normally iterations); only their ratios
    matter (see the note at the top of this file). Detectron2's ``LRScheduler`` hook turns the
    instantiated scheduler into an ``LRMultiplier`` over ``train.max_iter``.
    """
    drops = [int(d) for d in drop_iters]
    if total_iters < 1:
        raise ValueError(f"total_iters must be >= 1, got {total_iters}")
    if any(not 0 < d < total_iters for d in drops) or drops != sorted(set(drops)):
        raise ValueError(f"drop_iters must increase strictly within (0, {total_iters}), got {list(drop_iters)}")
    if not 0 <= warmup_iters <= total_iters:
        raise ValueError(f"warmup_iters must be in [0, {total_iters}], got {warmup_iters}")
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(drops) + 1)],
            milestones=drops,
            num_updates=int(total_iters),
        ),
        warmup_length=warmup_iters / total_iters,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )
