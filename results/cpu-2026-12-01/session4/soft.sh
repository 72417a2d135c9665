#!/bin/bash
# Issue 12: rescore with the refreshed scores as soft objectness targets (JOINDET.PRIORS.OBJECTNESS_TARGET
# refreshed_score), prior quality per version on both domains; seed 0, stops after the last refresh.
cd /work/runs/soft
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
for spec in "shapes_rescore_soft configs/mini/pretrain_synth.yaml rescore" \
            "clutter_rescore_soft configs/mini/clutter/pretrain_clutter.yaml rescore"; do
  set -- $spec
  if grep -q "Prior bank version 2:" $OUT/$1.log 2>/dev/null; then echo "$1 done"; continue; fi
  rm -rf $OUT/$1
  $PY train_net.py --config-file $2 SEED 0 OUTPUT_DIR $OUT/$1 SOLVER.MAX_ITER 201 SOLVER.CHECKPOINT_PERIOD 100000 \
    JOINDET.REFRESH.GENERATOR $3 JOINDET.PRIORS.OBJECTNESS_TARGET refreshed_score > $OUT/$1.log 2>&1
done
