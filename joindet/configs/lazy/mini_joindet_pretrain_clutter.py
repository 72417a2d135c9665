# JoinDet pretraining of mini_joindet_pretrain_synth.py (same model, priors, refreshes and schedule) on the
# clutter train images, without their labels -- the LazyConfig twin of configs/mini/clutter/pretrain_clutter.yaml.
# Only the datasets (and the output folder) change; joindet.engine.lazy registers clutter_* from
# dataloader.clutter (the defaults of joindet.data.generated.GENERATED_SET_DEFAULTS).
#
#   python train_net.py --config-file projects/JoinDet/configs/mini_joindet_pretrain_clutter.py
from joindet.data.generated import GENERATED_SET_DEFAULTS

from .mini_joindet_pretrain_synth import (  # noqa: F401  (the whole config)
    active_priors,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    prior_hook,
    train,
)

dataloader.clutter = dict(root="", **GENERATED_SET_DEFAULTS)
dataloader.train.dataset.names = "clutter_train_unlabeled"
prior_hook.eval_dicts.names = "clutter_train"  # the same images with their boxes: prior quality per version

train.output_dir = "output/mini_pretrain_clutter"
