# Deformable DETR's optimiser: AdamW, lr 2e-4, weight decay 1e-4 (normalisation layers included, as
# SOLVER.WEIGHT_DECAY_NORM in configs/Base-DeformableDETR.yaml), backbone and sampling offsets /
# reference points at 0.1x, and the global gradient norm over all parameters clipped to 0.1.
# `params.model` is set to the model by joindet.engine.lazy before the optimiser is instantiated.
# The optimiser class is itself a LazyCall: `optimizer._target_.max_norm=0.05` changes the clipping,
# `optimizer._target_=torch.optim.AdamW` turns it off.
import torch

from detectron2.config import LazyCall as L

from joindet.engine.optimizer import build_param_groups, with_full_model_clipping

AdamW = L(L(with_full_model_clipping)(optimizer_cls=torch.optim.AdamW, max_norm=0.1))(
    params=L(build_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm="${..weight_decay}",
        backbone_multiplier=0.1,
        linear_proj_multiplier=0.1,
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)
