# The object priors of JoinDet pretraining as LazyConfig components, built the way the yacs route builds them
# from JOINDET.* (each class's @configurable from_config) but with L(Class)(...): a key left out takes the
# class's own default, so no default is written here.
#
# active_priors: the prior bank folder and the version in use (JOINDET.PRIORS.BANK_DIR; the yacs default ""
#   means OUTPUT_DIR/prior_bank). joindet.engine.lazy instantiates it once and gives the same object to
#   dataloader.train.mapper and to the hook.
# prior_hook: the PriorRefreshHook -- the version-0 source (init_source: any class of
#   joindet.priors.sources.PRIOR_SOURCE_REGISTRY, here NCut on the backbone's res4 as
#   JOINDET.PRIORS.INIT_SOURCE's default), the refresh generator (generator: any class of
#   joindet.priors.refresh.REFRESH_GENERATOR_REGISTRY, here the paper's ncut_encoder), the Box Smooth
#   settings (smooth), the refresh period in iterations (period = JOINDET.UPDATE_PERIOD_ITERS; 0 = fixed priors)
#   the teacher the refreshes read (teacher_momentum = JOINDET.REFRESH.TEACHER_MOMENTUM; 0 = the model itself)
#   and the prior-quality set (eval_dicts, JOINDET.PRIORS.EVAL_DATASET). Its active_priors, dataset_dicts
#   and dataset_name come from joindet.engine.lazy (the run's objects, shared with the train loader).
# Switching a component is one assignment, e.g. prior_hook.init_source = L(SelectiveSearchSource)().
from detectron2.config import LazyCall as L

from joindet.engine.prior_hook import PriorRefreshHook
from joindet.priors.active import ActivePriors
from joindet.priors.box_smooth import BoxSmoothSettings
from joindet.priors.ncut_source import NCutBackboneSource
from joindet.priors.refresh import NCutEncoderGenerator

active_priors = L(ActivePriors)(bank_root="${train.output_dir}/prior_bank")

prior_hook = L(PriorRefreshHook)(
    # reads the images with the test-time mapper; the init checkpoint is part of its version-0 cache key
    init_source=L(NCutBackboneSource)(mapper="${dataloader.prior_mapper}", weights="${train.init_checkpoint}"),
    generator=L(NCutEncoderGenerator)(mapper="${dataloader.prior_mapper}"),
    smooth=L(BoxSmoothSettings)(),
)
