#!/bin/bash
cd /work/main
PY=.venv/bin/python
M=output/measure
echo "=== $(date +%T) ncut benchmark"; $PY -m joindet.benchmarks.ncut --num-images 6 --grids 32 64 --json $M/bench_ncut.json > $M/bench_ncut.log 2>&1
echo "=== $(date +%T) bank benchmark"; $PY -m joindet.benchmarks.bank --json $M/bench_bank.json > $M/bench_bank.log 2>&1
echo "=== $(date +%T) demo (rescore) with baseline"; s=$(date +%s)
make demo DEMO_ARGS="--baseline --output-dir output/demo" > $M/demo.log 2>&1
echo "demo wall $(( $(date +%s) - s )) s" >> $M/demo.log
echo "=== $(date +%T) done"
