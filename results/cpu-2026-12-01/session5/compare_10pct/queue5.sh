#!/bin/bash
# Session 5: the joindet_best row (matched_objectness + Soft-NMS + refreshed_score) at a1317ac, seeds 0-2, in the
# comparison folder. usage: queue5.sh WORKER [PGID to wait for]. Claims with mkdir (remove a stale claim of an
# unfinished run before restarting: rm -r .claims/joindet_best_<seed>). One thread per job.
cd /work/runs/best5
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=/work/main/output/compare_10pct
W=$1
[ -n "$2" ] && while kill -0 -- -$2 2>/dev/null; do sleep 20; done
for s in 0 1 2; do
  m=joindet_best
  [ -f $OUT/method_$m/seed_$s/result.json ] && continue
  mkdir $OUT/.claims/${m}_$s 2>/dev/null || continue
  echo "[worker $W $(date +%T)] $m seed $s"
  f=/tmp/compare_one_${m}_5.yaml
  /work/main/.venv/bin/python - "$m" "$f" <<'PY'
import sys, yaml
methods = yaml.safe_load(open("configs/mini/compare_methods.yaml"))
yaml.safe_dump([x for x in methods if x["name"] == sys.argv[1]], open(sys.argv[2], "w"))
PY
  nice -n 10 /work/main/.venv/bin/python -m joindet.tools.ablation --methods $f --seeds $s \
    --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir $OUT || echo "[worker $W] FAILED $m $s"
  echo "[worker $W $(date +%T)] done $m seed $s"
done
