#!/bin/bash
# Issue 12, prior quality per version for every refresh generator on both domains: each pretraining stops
# right after its last refresh (versions 1 and 2 at iterations 100 and 200; MAX_ITER 201), seed 0.
cd /work/runs/topk
# one thread per job: two 2-thread jobs on 2 cores spin in OpenMP barriers and run ~10x slower
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
mkdir -p $OUT
run() { # name config generator
  name=$1; cfg=$2; gen=$3
  if grep -q "Prior bank version 2:" $OUT/$name.log 2>/dev/null; then echo "$name done"; return; fi
  rm -rf $OUT/$name
  nice -n 10 $PY train_net.py --config-file $cfg SEED 0 OUTPUT_DIR $OUT/$name SOLVER.MAX_ITER 201 \
    SOLVER.CHECKPOINT_PERIOD 100000 JOINDET.REFRESH.GENERATOR $gen > $OUT/$name.log 2>&1
}
run clutter_ncut_encoder configs/mini/clutter/pretrain_clutter.yaml ncut_encoder
run shapes_detector_ncut configs/mini/pretrain_synth.yaml detector_ncut
run clutter_detector_ncut configs/mini/clutter/pretrain_clutter.yaml detector_ncut
run shapes_detector configs/mini/pretrain_synth.yaml detector
run clutter_detector configs/mini/clutter/pretrain_clutter.yaml detector
