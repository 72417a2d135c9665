#!/bin/bash
# Core B after the clutter snms_soft run: the shapes Soft-NMS run (target one), the joindet_best downstream
# run of seed 0 (comparison folder, worktree at 3b6b22a), the clutter Soft-NMS run, the `detector` runs, then
# joindet_best seeds 1 and 2. One thread. Resumable (each step skips what finished).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/work/main/output/versions
while pgrep -f "OUTPUT_DIR /work/main/output/versions/clutter_rescore_snms_soft" > /dev/null; do sleep 10; done
prior_run() { # name config generator extra...
  name=$1; cfg=$2; gen=$3; shift 3
  if grep -q "Prior bank version 2:" $OUT/$name.log 2>/dev/null; then echo "$name done"; return; fi
  rm -rf $OUT/$name; echo "$(date +%T) $name"
  (cd /work/runs/snms && $PY train_net.py --config-file $cfg SEED 0 OUTPUT_DIR $OUT/$name SOLVER.MAX_ITER 201 \
    SOLVER.CHECKPOINT_PERIOD 100000 JOINDET.REFRESH.GENERATOR $gen "$@" > $OUT/$name.log 2>&1 < /dev/null)
}
best() { # seed
  echo "$(date +%T) joindet_best seed $1"
  mkdir -p /work/main/output/compare_10pct/.claims/joindet_best_$1
  (cd /work/runs/best && $PY - <<'PY'
import yaml
m = yaml.safe_load(open("configs/mini/compare_methods.yaml"))
yaml.safe_dump([x for x in m if x["name"] == "joindet_best"], open("/tmp/compare_one_joindet_best.yaml", "w"))
PY
  nice -n 10 $PY -m joindet.tools.ablation --methods /tmp/compare_one_joindet_best.yaml --seeds $1 \
    --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir /work/main/output/compare_10pct)
}
prior_run shapes_rescore_snms configs/mini/pretrain_synth.yaml rescore JOINDET.SMOOTH.SOFT_NMS_SIGMA 0.5
best 0
prior_run clutter_rescore_snms configs/mini/clutter/pretrain_clutter.yaml rescore JOINDET.SMOOTH.SOFT_NMS_SIGMA 0.5
prior_run shapes_detector configs/mini/pretrain_synth.yaml detector
prior_run clutter_detector configs/mini/clutter/pretrain_clutter.yaml detector
best 1
best 2
