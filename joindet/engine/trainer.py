"""Detectron2 trainer for Deformable DETR, customised through DefaultTrainer's classmethods."""
import contextlib
import os
import weakref

import detectron2.engine.defaults as d2_defaults
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator

from ..checkpoint import JoinDetCheckpointer
from ..data.mapper import DetrDatasetMapper
from .optimizer import build_optimizer

__all__ = ["Trainer", "create_ddp_model_any_device", "has_compiled_ops"]


def has_compiled_ops():
    """Whether Detectron2's compiled ``_C`` loads (it does not for the py3.10 wheel on 3.11)."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


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


def build_checkpointer(cfg, model, **kwargs):
    """The checkpointer of every JoinDet route (training, --resume, --eval-only)."""
    return JoinDetCheckpointer(model, cfg.OUTPUT_DIR, strict=not cfg.MODEL.WEIGHTS_NON_STRICT, **kwargs)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        with _cpu_ddp_support():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling build_hooks; use
        # JoinDet's (heads dropped at fine-tuning, strict shape checks) for loading and saving alike.
        self.checkpointer = build_checkpointer(self.cfg, self._trainer.model, trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DetrDatasetMapper(cfg, is_train=True))

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
