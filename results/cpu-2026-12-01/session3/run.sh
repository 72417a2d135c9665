#!/bin/bash
# TRAIN_TOPK experiment (issue 12): rescore refresh, only the 10 best-scored priors of an image supervise.
cd /work/runs/topk
PY=/work/main/.venv/bin/python
OUT=/work/main/output/topk
run() { # name config opts...
  name=$1; cfg=$2; shift 2
  if [ -f $OUT/$name/model_final.pth ]; then echo "$name done"; return; fi
  resume=""; [ -f $OUT/$name/last_checkpoint ] && resume="--resume"
  $PY train_net.py --config-file $cfg $resume SEED 0 OUTPUT_DIR $OUT/$name "$@" > $OUT/$name.log 2>&1
}
run shapes_rescore_top10 configs/mini/pretrain_synth.yaml JOINDET.PRIORS.TRAIN_TOPK 10
run clutter_rescore_top10 configs/mini/clutter/pretrain_clutter.yaml JOINDET.PRIORS.TRAIN_TOPK 10
