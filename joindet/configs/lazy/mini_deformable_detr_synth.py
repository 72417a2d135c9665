# A small Deformable DETR on the built-in synthetic shapes, sized for a 2-core CPU -- the LazyConfig twin
# of configs/mini/deformable_detr_synth.yaml: the frozen ImageNet EfficientNet-Lite0 backbone (timm,
# res3-res5), 3 levels, d 128, 8 heads, 3+3 layers, FFN 512, 50 queries, 6 classes, 256 px, batch 8,
# AdamW 2e-4 for every trained parameter, 360 iterations (lr x0.1 at 300).
#
#   python train_net.py --config-file projects/JoinDet/configs/mini_deformable_detr_synth.py
from .common.data.synthetic import dataloader
from .common.models.deformable_detr import model
from .common.models.mini import make_mini
from .common.optim import AdamW as optimizer
from .common.schedule import step_lr_multiplier
from .common.train import train

make_mini(model, optimizer)
model.num_classes = 6  # joindet.data.synthetic.SHAPE_CLASSES

# 360 iterations at batch 8 = 7.2 epochs of the 400 training images; lr x0.1 at iteration 300.
train.max_iter = 360
lr_multiplier = step_lr_multiplier(total_iters=360, drop_iters=[300])

train.output_dir = "output/mini_deformable_detr_synth"
train.checkpointer.period = 100000  # only model_final
train.eval_period = 0  # evaluate at the end
train.device = "cpu"
