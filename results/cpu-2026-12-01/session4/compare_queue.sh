#!/bin/bash
# Two-worker queue over issue 12's comparison (seed-major): each worker claims one (seed, method) run with
# mkdir and runs the ablation runner on a one-method file (same run folder as the full file). Resumable: a
# stale claim from a stopped session is removed by `rm -r .claims` before restarting the workers.
# At the end, the full runner (run_by_seed.sh) skips every finished run and writes the whole table.
cd /work/runs/compare
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=/work/main/output/compare_10pct
W=$1
for s in 0 1 2; do
  for m in no_pretraining random_crops detreg joindet_ncut_encoder joindet_rescore; do
    [ -f $OUT/method_$m/seed_$s/result.json ] && continue
    mkdir $OUT/.claims/${m}_$s 2>/dev/null || continue
    echo "[worker $W $(date +%T)] $m seed $s"
    f=/tmp/compare_one_$m.yaml
    /work/main/.venv/bin/python - "$m" "$f" <<'PY'
import sys, yaml
methods = yaml.safe_load(open("configs/mini/compare_methods.yaml"))
yaml.safe_dump([x for x in methods if x["name"] == sys.argv[1]], open(sys.argv[2], "w"))
PY
    nice -n 10 /work/main/.venv/bin/python -m joindet.tools.ablation --methods $f --seeds $s \
      --finetune-config configs/mini/finetune_synth_10pct.yaml --out-dir $OUT || echo "[worker $W] FAILED $m $s"
    echo "[worker $W $(date +%T)] done $m seed $s"
  done
done
