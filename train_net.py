#!/usr/bin/env python
"""Train or evaluate JoinDet / Deformable DETR.

    python train_net.py --config-file configs/mini/deformable_detr_synth.yaml
    python train_net.py --config-file configs/deformable_detr_r50_coco.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file projects/JoinDet/configs/<name>.py train.max_iter=10

yacs (.yaml) configs take ``KEY VALUE`` overrides; LazyConfig (.py) configs take ``key=value``.
"""
from detectron2.engine import default_argument_parser, launch

from joindet.engine.launcher import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
