#!/bin/bash
# Issue 12: the remaining refresh generators, per version, both domains (seed 0, stops after the last refresh).
cd /work/runs/online
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
while pgrep -f output/topk/online.sh > /dev/null; do sleep 10; done
for spec in "shapes_detector_ncut configs/mini/pretrain_synth.yaml detector_ncut" \
            "clutter_detector_ncut configs/mini/clutter/pretrain_clutter.yaml detector_ncut" \
            "shapes_detector configs/mini/pretrain_synth.yaml detector" \
            "clutter_detector configs/mini/clutter/pretrain_clutter.yaml detector"; do
  set -- $spec
  if grep -q "Prior bank version 2:" $OUT/$1.log 2>/dev/null; then echo "$1 done"; continue; fi
  rm -rf $OUT/$1
  $PY train_net.py --config-file $2 SEED 0 OUTPUT_DIR $OUT/$1 SOLVER.MAX_ITER 201 SOLVER.CHECKPOINT_PERIOD 100000 \
    JOINDET.REFRESH.GENERATOR $3 > $OUT/$1.log 2>&1
done
