#!/bin/bash
# Measurements of this session, in order, each skipped when its result exists (resumable).
cd /work/main
PY=.venv/bin/python
M=output/measure
step() { echo "=== $(date +%T) $1"; }
if [ ! -f $M/v0_sources.json ]; then
  step "version-0 sources"
  /usr/bin/time -v $PY -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \
    --sources ncut_backbone selective_search --dataset synth_train --json $M/v0_sources.json > $M/v0_sources.log 2>&1
  $PY -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \
    --sources ncut_backbone --dataset synth_train --json $M/v0_ncut_res3.json --opts JOINDET.NCUT.BACKBONE_FEATURE res3 > $M/v0_ncut_res3.log 2>&1
fi
for name in lite0:configs/mini/deformable_detr_synth.yaml r18:configs/mini/deformable_detr_synth_r18.yaml; do
  tag=${name%%:*}; cfgf=${name#*:}
  if [ ! -f $M/sup_${tag}_150/eval_results.json ]; then
    step "supervised $tag 150 it"
    s=$(date +%s)
    $PY train_net.py --config-file $cfgf SOLVER.MAX_ITER 150 "SOLVER.STEPS" "()" SEED 0 OUTPUT_DIR $M/sup_${tag}_150 > $M/sup_${tag}_150.log 2>&1
    echo "wall $(( $(date +%s) - s )) s" >> $M/sup_${tag}_150.log
  fi
done
if [ ! -f $M/pretrain_ncut_encoder/model_final.pth ]; then
  step "pretraining, paper refresh (ncut_encoder), checkpoints every 100"
  s=$(date +%s)
  $PY train_net.py --config-file configs/mini/pretrain_synth.yaml SEED 0 SOLVER.CHECKPOINT_PERIOD 100 \
    JOINDET.REFRESH.GENERATOR ncut_encoder OUTPUT_DIR $M/pretrain_ncut_encoder > $M/pretrain_ncut_encoder.log 2>&1
  echo "wall $(( $(date +%s) - s )) s" >> $M/pretrain_ncut_encoder.log
fi
if [ ! -f $M/generators_it100.json ]; then
  step "refresh generators on the iteration-100 model against v0"
  $PY -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \
    --weights $M/pretrain_ncut_encoder/model_0000099.pth --bank $M/pretrain_ncut_encoder/prior_bank --version 0 \
    --generators ncut_encoder detector detector_ncut rescore --dataset synth_train --json $M/generators_it100.json \
    > $M/generators_it100.log 2>&1
  $PY -m joindet.tools.compare_priors --config-file configs/mini/pretrain_synth.yaml \
    --weights $M/pretrain_ncut_encoder/model_final.pth --bank $M/pretrain_ncut_encoder/prior_bank --version 0 \
    --generators ncut_encoder detector detector_ncut rescore --dataset synth_train --json $M/generators_it300.json \
    > $M/generators_it300.log 2>&1
fi
step "done"
