#!/bin/bash
# Issue 12: prior quality per version with Soft-NMS in the Box Smooth merge (JOINDET.SMOOTH.SOFT_NMS_SIGMA 0.5),
# with the refreshed scores as soft objectness targets or not, both domains; then the `detector` generator.
# Seed 0; each run stops right after its last refresh (versions 1, 2 at iterations 100, 200). Resumable.
cd /work/runs/snms
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
while pgrep -f output/soft/run.sh > /dev/null; do sleep 10; done
SN="JOINDET.SMOOTH.SOFT_NMS_SIGMA 0.5"
ST="JOINDET.PRIORS.OBJECTNESS_TARGET refreshed_score"
while read -r name cfg gen extra; do
  if grep -q "Prior bank version 2:" $OUT/$name.log 2>/dev/null; then echo "$name done"; continue; fi
  rm -rf $OUT/$name
  echo "$(date +%T) $name"
  $PY train_net.py --config-file $cfg SEED 0 OUTPUT_DIR $OUT/$name SOLVER.MAX_ITER 201 SOLVER.CHECKPOINT_PERIOD 100000 \
    JOINDET.REFRESH.GENERATOR $gen $extra > $OUT/$name.log 2>&1 < /dev/null
done <<LIST
shapes_rescore_snms_soft configs/mini/pretrain_synth.yaml rescore $SN $ST
clutter_rescore_snms_soft configs/mini/clutter/pretrain_clutter.yaml rescore $SN $ST
shapes_rescore_snms configs/mini/pretrain_synth.yaml rescore $SN
clutter_rescore_snms configs/mini/clutter/pretrain_clutter.yaml rescore $SN
shapes_detector configs/mini/pretrain_synth.yaml detector
clutter_detector configs/mini/clutter/pretrain_clutter.yaml detector
LIST
