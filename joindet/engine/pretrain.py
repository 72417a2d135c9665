"""Trainer for JoinDet pretraining: priors from the bank as targets, refreshed by a hook.

The refresh hook (:class:`joindet.engine.prior_hook.PriorRefreshHook`) is built from the config by its own
``from_config``, as the LazyConfig route builds it with ``L(PriorRefreshHook)(...)``.
"""
from detectron2.data import get_detection_dataset_dicts

from ..data.mapper import DetrDatasetMapper
from ..data.pretrain_mapper import JoinDetDatasetMapper
from ..priors.active import ActivePriors
from .common import insert_prior_hook, resolve_bank_dir
from .prior_hook import PriorRefreshHook
from .trainer import Trainer, build_resumable_train_loader, unwrap_model

__all__ = ["JoinDetTrainer", "bank_dir"]


def bank_dir(cfg):
    """The prior bank folder: JOINDET.PRIORS.BANK_DIR, or OUTPUT_DIR/prior_bank."""
    return resolve_bank_dir(cfg.JOINDET.PRIORS.BANK_DIR, cfg.OUTPUT_DIR)


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
        # kept for build_hooks: the refresh hook walks the same images (loaded once)
        self._pretrain_dicts = dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        mapper = JoinDetDatasetMapper(cfg, active_priors=self.active_priors)
        loader, self._train_sampler = build_resumable_train_loader(cfg, mapper, dataset=dicts)
        return loader

    def build_hooks(self):
        cfg = self.cfg
        hook_list = super().build_hooks()
        self.prior_hook = PriorRefreshHook(cfg, active_priors=self.active_priors, dataset_dicts=self._pretrain_dicts,
                                           mapper=DetrDatasetMapper(cfg, is_train=False))
        return insert_prior_hook(hook_list, self.prior_hook)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0:
            # a fresh run: the frozen embedding encoder starts from the backbone's (loaded) weights
            unwrap_model(self.model).sync_embed_encoder()
