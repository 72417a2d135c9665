"""What both ``train_net.py`` routes use: the yacs trainers (``joindet.engine.trainer`` / ``pretrain``) and the
LazyConfig route (``joindet.engine.lazy``) are two config front-ends over these pieces, and neither owns them.

- the model: :func:`unwrap_model`, :func:`create_ddp_model_any_device` (DDP that also wraps CPU models, for
  gloo processes on a CPU machine), :func:`check_batch_norm_batch` (refuse BatchNorm on one image per process);
- the data stream: :func:`build_resumable_sampler` (one seed shared by every rank, for the index stream and the
  loader) and :func:`skip_consumed` (a resumed run reads the images the uninterrupted one would have read);
- the schedule: :func:`iters_per_epoch` and :func:`epochs_to_iters`, the one place epochs become iterations
  (``joindet.config.resolve_epochs`` for yacs, :func:`joindet.engine.lazy.resolve_lazy_epochs` for LazyConfigs);
- pretraining: :func:`resolve_bank_dir` (the prior bank folder) and :func:`insert_prior_hook` (where the
  refresh hook goes among Detectron2's hooks);
- fault tolerance: :func:`fault_tolerance_hooks` (the random generators in every checkpoint, SIGTERM saves
  one and stops; ``joindet.engine.fault_tolerance``).

Dataset registration shared by both routes is :func:`joindet.data.datasets.register_joindet_datasets`.
"""
import contextlib
import math
import os

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import hooks
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn

from .fault_tolerance import PreemptionHook, ResumableTrainingSampler, RNGStateHook

__all__ = [
    "unwrap_model",
    "create_ddp_model_any_device",
    "cpu_ddp_support",
    "check_batch_norm_batch",
    "build_resumable_sampler",
    "skip_consumed",
    "iters_per_epoch",
    "epochs_to_iters",
    "resolve_bank_dir",
    "insert_prior_hook",
    "fault_tolerance_hooks",
]


# --------------------------------------------------------------------------- the model
def unwrap_model(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


def create_ddp_model_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model``, except that a CPU model gets ``device_ids=None`` (DDP rejects
    device ids for CPU modules): this is what lets ``--num-gpus N`` run N gloo processes on a CPU machine."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


@contextlib.contextmanager
def cpu_ddp_support():
    """Within the block, Detectron2's ``DefaultTrainer`` wraps CPU models in DDP without device ids."""
    d2_defaults.create_ddp_model = create_ddp_model_any_device
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


def check_batch_norm_batch(model, total_batch_size, world_size, *, batch_key="SOLVER.IMS_PER_BATCH",
                           norm_key="MODEL.RESNETS.NORM"):
    """Refuse, before the first iteration, a run whose BatchNorm layers would see one image at a time.

    A BatchNorm layer in training mode normalises over the images of its own process (unless it is synced
    across processes). With one image per process its statistics are those of a single image, and on a
    small random crop (a 1x1 ``res5`` map) it cannot normalise at all and the run dies mid-training.
    Call this once the model is in the mode training uses (frozen parts in eval mode).

    Args:
        model: the (unwrapped) model, in training mode.
        total_batch_size: images per iteration over all processes.
        world_size: number of training processes.
        batch_key, norm_key: the config keys named in the error (the LazyConfig route passes its own).
    Raises ``ValueError`` naming the keys, the values and the offending layers.
    """
    per_process = total_batch_size // max(world_size, 1)
    if per_process >= 2:
        return
    synced = (nn.SyncBatchNorm, NaiveSyncBatchNorm) if world_size > 1 else ()
    offenders = [name for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and not isinstance(m, synced)]
    if offenders:
        raise ValueError(
            f"{batch_key} = {total_batch_size} on {world_size} process(es) gives {per_process} image per process, "
            f"but {len(offenders)} BatchNorm layer(s) train on each process's own batch (e.g. {offenders[0]!r}, "
            f"from {norm_key} = 'BN'): one image per process gives single-image statistics and fails on a 1x1 "
            f"feature map. Use at least 2 images per process ({batch_key} >= {2 * world_size}), a norm synced "
            f"across processes ({norm_key} 'naiveSyncBN' or 'SyncBN', with more than one process), or 'FrozenBN' "
            "for a pretrained backbone.")


# --------------------------------------------------------------------------- the data stream
def build_resumable_sampler(num_images):
    """``(sampler, seed)``: a :class:`ResumableTrainingSampler` over ``num_images`` and the seed it uses, one
    seed the same on every rank (``comm.shared_random_seed``, from the seeded global generators), which the
    caller also gives the loader for its own generator: the loader then never draws from torch's global
    generator, whose state the checkpoint restores."""
    seed = comm.shared_random_seed()
    return ResumableTrainingSampler(num_images, seed=seed), seed


def skip_consumed(sampler, start_iter, total_batch_size):
    """Move a resumed run's ``sampler`` past the images of iterations ``0 .. start_iter - 1`` (read before the
    interruption; ``total_batch_size`` over all processes). Nothing for a fresh run or another sampler (a
    resumed run then restarts its stream)."""
    if start_iter > 0 and isinstance(sampler, ResumableTrainingSampler):
        sampler.skip(start_iter * (total_batch_size // comm.get_world_size()))


# --------------------------------------------------------------------------- the schedule
def iters_per_epoch(num_images, total_batch_size):
    """Iterations of one epoch: ``ceil(num_images / total_batch_size)`` (the batch summed over all processes)."""
    if num_images < 1:
        raise ValueError(f"Cannot compute a schedule for a training set of {num_images} images")
    return math.ceil(num_images / total_batch_size)


def epochs_to_iters(epochs, per_epoch):
    """``epochs`` (a float) of ``per_epoch`` iterations, rounded, at least 1."""
    return max(1, int(round(epochs * per_epoch)))


# --------------------------------------------------------------------------- pretraining
def resolve_bank_dir(bank_dir, output_dir):
    """The prior bank folder: ``bank_dir``, or ``output_dir/prior_bank`` when it is empty."""
    return bank_dir or os.path.join(output_dir, "prior_bank")


def insert_prior_hook(hook_list, refresh):
    """Insert ``refresh`` into ``hook_list`` (in place) before the first ``PeriodicCheckpointer`` or
    ``EvalHook``: a checkpoint then records the version the following iterations use, and every process
    (only the main one has a checkpointer) runs the refresh and the evaluation, which both communicate,
    in the same order. Returns ``hook_list``."""
    index = next((i for i, h in enumerate(hook_list) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))),
                 len(hook_list))
    hook_list.insert(index, refresh)
    return hook_list


# --------------------------------------------------------------------------- fault tolerance
def fault_tolerance_hooks(checkpointer):
    """The hooks that go last in every route: :class:`RNGStateHook` (the random generators go into every
    checkpoint and are restored on resume) and :class:`PreemptionHook` (SIGTERM saves a checkpoint and stops);
    last, so that their ``before_train`` / ``after_step`` follow the other hooks'."""
    return [RNGStateHook(), PreemptionHook(checkpointer)]
