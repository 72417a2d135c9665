"""Detectron2 trainer for Deformable DETR, customised through DefaultTrainer's classmethods."""
import contextlib
import os
import weakref

from torch import nn

import detectron2.engine.defaults as d2_defaults
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import NaiveSyncBatchNorm

from ..checkpoint import JoinDetCheckpointer
from ..data.mapper import DetrDatasetMapper
from ..evaluation.coco import has_compiled_ops
from .fault_tolerance import PreemptionHook, ResumableTrainingSampler, RNGStateHook
from .optimizer import build_optimizer

__all__ = ["Trainer", "build_resumable_train_loader", "check_batch_norm_batch", "create_ddp_model_any_device", "unwrap_model"]


def unwrap_model(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


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


def create_ddp_model_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model``, except that a CPU model gets ``device_ids=None`` (DDP rejects
    device ids for CPU modules): this is what lets ``--num-gpus N`` run N gloo processes on a CPU machine."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _cpu_ddp_support():
    """Within the block, DefaultTrainer wraps CPU models in DDP without device ids."""
    d2_defaults.create_ddp_model = create_ddp_model_any_device
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


def build_resumable_train_loader(cfg, mapper, dataset=None):
    """Detectron2's train loader for ``cfg`` (``dataset``: dataset dicts, default ``DATASETS.TRAIN`` with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), with a :class:`ResumableTrainingSampler` when
    ``DATALOADER.SAMPLER_TRAIN`` is "TrainingSampler". Returns ``(loader, sampler)``; ``sampler`` is None
    for Detectron2's other samplers (a resumed run then restarts their stream)."""
    if dataset is None:
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    # One seed, the same on every rank (from SEED), for the index stream and for the loader's own generator:
    # the loader then never draws from torch's global generator, whose state the checkpoint restores.
    seed = comm.shared_random_seed()
    sampler = (ResumableTrainingSampler(len(dataset), seed=seed)
               if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" else None)
    loader = build_detection_train_loader(cfg, dataset=dataset, mapper=mapper, sampler=sampler, seed=seed)
    return loader, sampler


def build_checkpointer(cfg, model, **kwargs):
    """The checkpointer of every JoinDet route (training, --resume, --eval-only)."""
    return JoinDetCheckpointer(model, cfg.OUTPUT_DIR, strict=not cfg.MODEL.WEIGHTS_NON_STRICT, **kwargs)


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with JoinDet's checkpointer, optimizer, loaders and evaluator, and
    fault tolerance (``joindet.engine.fault_tolerance``): the checkpoint also holds the random-number
    generators, a resumed run continues the data stream where it stopped, and SIGTERM saves a checkpoint
    and stops cleanly."""

    def __init__(self, cfg):
        with _cpu_ddp_support():
            super().__init__(cfg)
        # SimpleTrainer put the model in training mode: refuse now a batch that BatchNorm cannot train on
        check_batch_norm_batch(unwrap_model(self.model), cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling build_hooks; use
        # JoinDet's (heads dropped at fine-tuning, strict shape checks) for loading and saving alike.
        self.checkpointer = build_checkpointer(self.cfg, self._trainer.model, trainer=weakref.proxy(self))
        # last: their before_train / after_step follow the other hooks' (see their docstrings)
        return super().build_hooks() + [RNGStateHook(), PreemptionHook(self.checkpointer)]

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        sampler = getattr(self, "_train_sampler", None)
        if self.start_iter > 0 and sampler is not None:
            # the images of iterations 0 .. start_iter - 1 were read before the interruption
            sampler.skip(self.start_iter * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    def build_train_loader(self, cfg):  # an instance method: resume_or_load moves the sampler on
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        # with the dataset's size the mapper can tell "every image is unusable" apart from a few bad files
        mapper = DetrDatasetMapper(cfg, is_train=True, num_images=len(dicts))
        loader, self._train_sampler = build_resumable_train_loader(cfg, mapper, dataset=dicts)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=DetrDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # Detections go to OUTPUT_DIR/inference/coco_instances_results.json, as in Detectron2's train_net.
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        # The C++ COCOeval comes with Detectron2's _C; without it, pycocotools' official path.
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder,
                             use_fast_impl=has_compiled_ops())
