#!/usr/bin/env python
"""Train or evaluate JoinDet / Deformable DETR (same as ``python -m joindet.engine.launcher``).

    python train_net.py --config-file configs/mini/deformable_detr_synth.yaml
    python train_net.py --config-file configs/pretrain.yaml --num-gpus 8
    python train_net.py --config-file configs/finetune_voc.yaml MODEL.WEIGHTS output/pretrain/model_final.pth
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file projects/JoinDet/configs/<name>.py train.max_iter=10

yacs (.yaml) configs take ``KEY VALUE`` overrides; LazyConfig (.py) configs take ``key=value``.
"""
from joindet.engine.launcher import cli

if __name__ == "__main__":
    cli()
