"""Detectron2 trainer for Deformable DETR, customised through DefaultTrainer's classmethods (the yacs route;
the pieces it shares with the LazyConfig route are in :mod:`joindet.engine.common`)."""
import os
import weakref

from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator

from ..checkpoint import JoinDetCheckpointer
from ..data.mapper import DetrDatasetMapper
from ..evaluation.coco import has_compiled_ops
from .common import (
    build_resumable_sampler,
    check_batch_norm_batch,
    cpu_ddp_support,
    fault_tolerance_hooks,
    skip_consumed,
    unwrap_model,
)
from .optimizer import build_optimizer

__all__ = ["Trainer", "build_resumable_train_loader", "build_checkpointer"]


def build_resumable_train_loader(cfg, mapper, dataset=None):
    """Detectron2's train loader for ``cfg`` (``dataset``: dataset dicts, default ``DATASETS.TRAIN`` with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), with a :class:`ResumableTrainingSampler` when
    ``DATALOADER.SAMPLER_TRAIN`` is "TrainingSampler". Returns ``(loader, sampler)``; ``sampler`` is None
    for Detectron2's other samplers (a resumed run then restarts their stream)."""
    if dataset is None:
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    # One seed, the same on every rank (from SEED), for the index stream and for the loader's own generator
    # (joindet.engine.common.build_resumable_sampler).
    sampler, seed = build_resumable_sampler(len(dataset))
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        sampler = None
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
        with cpu_ddp_support():
            super().__init__(cfg)
        # SimpleTrainer put the model in training mode: refuse now a batch that BatchNorm cannot train on
        check_batch_norm_batch(unwrap_model(self.model), cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling build_hooks; use
        # JoinDet's (heads dropped at fine-tuning, strict shape checks) for loading and saving alike.
        self.checkpointer = build_checkpointer(self.cfg, self._trainer.model, trainer=weakref.proxy(self))
        # last: their before_train / after_step follow the other hooks' (see their docstrings)
        return super().build_hooks() + fault_tolerance_hooks(self.checkpointer)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # the images of iterations 0 .. start_iter - 1 were read before the interruption
        skip_consumed(getattr(self, "_train_sampler", None), self.start_iter, self.cfg.SOLVER.IMS_PER_BATCH)

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
