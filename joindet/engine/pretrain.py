"""Trainer for JoinDet pretraining: priors from the bank as targets, refreshed by a hook."""
import os

from detectron2.data import DatasetCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import hooks

from ..data.mapper import DetrDatasetMapper
from ..data.pretrain_mapper import JoinDetDatasetMapper
from ..priors.active import ActivePriors
from ..priors.sources import build_prior_source_from_cfg
from .prior_hook import PriorRefreshHook, unwrap_model
from .trainer import Trainer

__all__ = ["JoinDetTrainer", "bank_dir"]


def bank_dir(cfg):
    """The prior bank folder: JOINDET.PRIORS.BANK_DIR, or OUTPUT_DIR/prior_bank."""
    return cfg.JOINDET.PRIORS.BANK_DIR or os.path.join(cfg.OUTPUT_DIR, "prior_bank")


class JoinDetTrainer(Trainer):
    """``DefaultTrainer`` customised for pretraining on unlabelled images.

    The train loader maps images with :class:`JoinDetDatasetMapper` (targets = the active prior version);
    :class:`PriorRefreshHook` runs before the checkpointer, so a checkpoint records the version that the
    following iterations use.
    """

    def __init__(self, cfg):
        self.active_priors = ActivePriors(bank_dir(cfg))
        super().__init__(cfg)

    def build_train_loader(self, cfg):  # an instance method: the mapper shares self.active_priors
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        mapper = JoinDetDatasetMapper(cfg, active_priors=self.active_priors)
        return build_detection_train_loader(cfg, dataset=dicts, mapper=mapper)

    def build_hooks(self):
        cfg = self.cfg
        hook_list = super().build_hooks()
        test_mapper = DetrDatasetMapper(cfg, is_train=False)
        eval_name = cfg.JOINDET.PRIORS.EVAL_DATASET
        refresh = PriorRefreshHook(
            active_priors=self.active_priors,
            dataset_dicts=get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False),
            dataset_name="+".join(cfg.DATASETS.TRAIN),
            init_source=build_prior_source_from_cfg(cfg, test_mapper),
            mapper=test_mapper,
            period=cfg.JOINDET.UPDATE_PERIOD_ITERS,
            feature_level=cfg.JOINDET.NCUT.FEATURE_LEVEL,
            batch_size=cfg.JOINDET.NCUT.BATCH_SIZE,
            ncut_kwargs={"tau": cfg.JOINDET.NCUT.TAU, "eps": cfg.JOINDET.NCUT.EPS,
                         "num_rounds": cfg.JOINDET.NCUT.NUM_ROUNDS, "nms_threshold": cfg.JOINDET.NCUT.NMS_THRESH},
            momentum=cfg.JOINDET.SMOOTH.MOMENTUM,
            iou_threshold=cfg.JOINDET.SMOOTH.IOU_THRESHOLD,
            topk=cfg.JOINDET.PRIORS.TOPK,
            eval_dicts=DatasetCatalog.get(eval_name) if eval_name else None,
        )
        index = next((i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicCheckpointer)), len(hook_list))
        hook_list.insert(index, refresh)
        self.prior_hook = refresh
        return hook_list

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0:
            # a fresh run: the frozen embedding encoder starts from the backbone's (loaded) weights
            unwrap_model(self.model).sync_embed_encoder()
