#!/bin/bash
# Clutter domain (issue 12): version-0 sources, then a pretraining per refresh generator with the prior
# quality of every version. Resumable: each step is skipped when its result exists. Runs from a worktree
# of a fixed commit (so edits in the main checkout do not change a running measurement).
cd /work/runs/measure
PY=/work/main/.venv/bin/python
M=/work/main/output/measure_clutter
mkdir -p $M
step() { echo "=== $(date +%T) $1"; }
if [ ! -f $M/v0_sources_clutter.json ]; then
  step "version-0 sources on clutter_train"
  $PY -m joindet.tools.compare_priors --config-file configs/mini/clutter/pretrain_clutter.yaml \
    --sources selective_search ncut_backbone ncut_color --dataset clutter_train --json $M/v0_sources_clutter.json > $M/v0_sources_clutter.log 2>&1
fi
for gen in rescore ncut_encoder; do
  if [ ! -f $M/pretrain_$gen/model_final.pth ]; then
    step "clutter pretraining, refresh $gen"
    s=$(date +%s)
    $PY train_net.py --config-file configs/mini/clutter/pretrain_clutter.yaml SEED 0 \
      JOINDET.REFRESH.GENERATOR $gen OUTPUT_DIR $M/pretrain_$gen > $M/pretrain_$gen.log 2>&1
    echo "wall $(( $(date +%s) - s )) s" >> $M/pretrain_$gen.log
  fi
done
step done
