#!/bin/bash
# Session 5: two chains on the cores the joindet_best queue (workers A = pid 10087, B = 10090) frees.
# chain 1 (after A): joindet_best seed 0 (queue5.sh C), then the clutter seed-1 prior run of the mini default;
# chain 2 (after B): the demo end to end at 7eaffb7 (the new defaults), then the shapes seed-1 prior run.
# One thread per job; every step skips what finished. usage: after.sh 1|2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
prior_seed1() {
  case $1 in shapes) cfg=configs/mini/pretrain_synth.yaml;; clutter) cfg=configs/mini/clutter/pretrain_clutter.yaml;; esac
  name=$1_rescore_matched_snms_seed1
  grep -q "Prior bank version 2:" $OUT/$name.log 2>/dev/null && return
  rm -rf $OUT/$name
  (cd /work/runs/demo5 && $PY train_net.py --config-file $cfg SEED 1 OUTPUT_DIR $OUT/$name SOLVER.MAX_ITER 201 \
    SOLVER.CHECKPOINT_PERIOD 100000 > $OUT/$name.log 2>&1 < /dev/null)
  echo "$(date +%T) $name done"
}
if [ "$1" = 1 ]; then
  while kill -0 10087 2>/dev/null; do sleep 20; done
  echo "$(date +%T) chain 1 start"
  /work/main/output/compare_10pct/queue5.sh C >> /work/main/output/compare_10pct/queue5_C.log 2>&1
  prior_seed1 clutter
else
  while kill -0 10090 2>/dev/null; do sleep 20; done
  echo "$(date +%T) chain 2 start"
  if [ ! -f /work/main/output/demo5/summary.json ]; then
    (cd /work/runs/demo5 && /usr/bin/time -v $PY -m joindet.demo --output-dir /work/main/output/demo5 > /work/main/output/demo5.log 2>&1 < /dev/null)
  fi
  echo "$(date +%T) demo done"
  prior_seed1 shapes
fi
