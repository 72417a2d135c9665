"""Trainer for JoinDet pretraining: priors from the bank as targets, refreshed by a hook.

The pieces both ``train_net.py`` routes use (this yacs trainer and ``joindet.engine.lazy``):
:func:`prior_settings_from_cfg` (the one mapping of ``JOINDET.*`` onto a LazyConfig's ``joindet``
section), :func:`build_prior_refresh_hook` and :func:`insert_prior_hook`.
"""
import os

from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.engine import hooks

from ..data.mapper import DetrDatasetMapper
from ..data.pretrain_mapper import JoinDetDatasetMapper
from ..priors.active import ActivePriors
from ..priors.refresh import build_refresh_generator
from ..priors.sources import build_prior_source_from_cfg
from .prior_hook import PriorRefreshHook
from .trainer import Trainer, build_resumable_train_loader, unwrap_model

__all__ = [
    "JoinDetTrainer",
    "bank_dir",
    "resolve_bank_dir",
    "prior_settings_from_cfg",
    "build_prior_refresh_hook",
    "insert_prior_hook",
]


def resolve_bank_dir(bank_dir, output_dir):
    """The prior bank folder: ``bank_dir``, or ``output_dir/prior_bank`` when it is empty."""
    return bank_dir or os.path.join(output_dir, "prior_bank")


def bank_dir(cfg):
    """The prior bank folder: JOINDET.PRIORS.BANK_DIR, or OUTPUT_DIR/prior_bank."""
    return resolve_bank_dir(cfg.JOINDET.PRIORS.BANK_DIR, cfg.OUTPUT_DIR)


def prior_settings_from_cfg(cfg):
    """The prior settings of a yacs cfg in the layout of a LazyConfig's ``joindet`` section: ``priors``,
    ``ncut`` and ``smooth`` hold ``JOINDET.PRIORS`` / ``JOINDET.NCUT`` / ``JOINDET.SMOOTH`` with their
    keys in lower case, ``update_period_iters`` is ``JOINDET.UPDATE_PERIOD_ITERS`` (resolved from
    ``JOINDET.UPDATE_PERIOD`` epochs by ``resolve_epochs``). Returns a nested dict of plain values."""
    j = cfg.JOINDET
    return {
        "priors": {k.lower(): v for k, v in j.PRIORS.items()},
        "ncut": {k.lower(): v for k, v in j.NCUT.items()},
        "smooth": {k.lower(): v for k, v in j.SMOOTH.items()},
        "refresh": {k.lower(): v for k, v in j.REFRESH.items()},
        "update_period_iters": j.UPDATE_PERIOD_ITERS,
    }


def build_prior_refresh_hook(*, active_priors, dataset_dicts, dataset_name, init_source, mapper, settings):
    """The :class:`PriorRefreshHook` of a pretraining run.

    Args:
        active_priors: the ``ActivePriors`` the training mapper reads.
        dataset_dicts: the pretraining images (``get_detection_dataset_dicts(names, filter_empty=False)``).
        dataset_name: ``"+".join(names)`` (part of the version-0 cache key).
        init_source: the version-0 prior source.
        mapper: the test-time mapper (resize only) the refreshes read images with.
        settings: :func:`prior_settings_from_cfg` of a yacs cfg, or a LazyConfig's ``joindet`` section
            (a mapping with the same keys).
    """
    p, s = settings["priors"], settings["smooth"]
    eval_name = p["eval_dataset"]
    return PriorRefreshHook(
        active_priors=active_priors,
        dataset_dicts=dataset_dicts,
        dataset_name=dataset_name,
        init_source=init_source,
        generator=build_refresh_generator(settings, mapper),
        period=settings["update_period_iters"],
        momentum=s["momentum"],
        iou_threshold=s["iou_threshold"],
        topk=p["topk"],
        soft_nms_sigma=s["soft_nms_sigma"],
        eval_dicts=DatasetCatalog.get(eval_name) if eval_name else None,
    )


def insert_prior_hook(hook_list, refresh):
    """Insert ``refresh`` into ``hook_list`` (in place) before the first ``PeriodicCheckpointer`` or
    ``EvalHook``: a checkpoint then records the version the following iterations use, and every process
    (only the main one has a checkpointer) runs the refresh and the evaluation, which both communicate,
    in the same order. Returns ``hook_list``."""
    index = next((i for i, h in enumerate(hook_list) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))),
                 len(hook_list))
    hook_list.insert(index, refresh)
    return hook_list


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
        test_mapper = DetrDatasetMapper(cfg, is_train=False)
        self.prior_hook = build_prior_refresh_hook(
            active_priors=self.active_priors,
            dataset_dicts=self._pretrain_dicts,
            dataset_name="+".join(cfg.DATASETS.TRAIN),
            init_source=build_prior_source_from_cfg(cfg, test_mapper),
            mapper=test_mapper,
            settings=prior_settings_from_cfg(cfg),
        )
        return insert_prior_hook(hook_list, self.prior_hook)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter == 0:
            # a fresh run: the frozen embedding encoder starts from the backbone's (loaded) weights
            unwrap_model(self.model).sync_embed_encoder()
