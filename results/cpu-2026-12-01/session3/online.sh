#!/bin/bash
# Issue 12: prior quality per version of the rescore_online refresh on both domains (seed 0, stops after the
# last refresh), one thread (other jobs share the 2 cores).
cd /work/runs/online
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
mkdir -p $OUT
for spec in "shapes_rescore_online configs/mini/pretrain_synth.yaml" "clutter_rescore_online configs/mini/clutter/pretrain_clutter.yaml"; do
  set -- $spec
  if grep -q "Prior bank version 2:" $OUT/$1.log 2>/dev/null; then echo "$1 done"; continue; fi
  rm -rf $OUT/$1
  $PY train_net.py --config-file $2 SEED 0 OUTPUT_DIR $OUT/$1 SOLVER.MAX_ITER 201 SOLVER.CHECKPOINT_PERIOD 100000 \
    JOINDET.REFRESH.GENERATOR rescore_online > $OUT/$1.log 2>&1
done
