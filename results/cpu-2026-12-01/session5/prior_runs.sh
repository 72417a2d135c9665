#!/bin/bash
# issue 12, session 5: the rescore refresh with matched_objectness (+ Soft-NMS 0.5, the mini default) on both
# domains, seed 0, 201 iterations (versions 1 and 2 at 100 and 200), one thread. usage: prior_runs.sh DOMAIN
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python; OUT=/work/main/output/versions
case $1 in shapes) cfg=configs/mini/pretrain_synth.yaml;; clutter) cfg=configs/mini/clutter/pretrain_clutter.yaml;; esac
name=$1_rescore_matched_snms
if grep -q "Prior bank version 2:" $OUT/$name.log 2>/dev/null; then echo "$name done"; exit; fi
rm -rf $OUT/$name
cd /work/runs/matched && $PY train_net.py --config-file $cfg SEED 0 OUTPUT_DIR $OUT/$name SOLVER.MAX_ITER 201 \
  SOLVER.CHECKPOINT_PERIOD 100000 JOINDET.REFRESH.GENERATOR rescore JOINDET.SMOOTH.SOFT_NMS_SIGMA 0.5 \
  JOINDET.REFRESH.RESCORE_QUALITY matched_objectness > $OUT/$name.log 2>&1 < /dev/null
