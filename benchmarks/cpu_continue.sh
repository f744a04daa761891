#!/usr/bin/env bash
# Continue training the bundled models on a CPU when no GPU is at hand: each starts from its
# bundled weights (the fold-0 models of the H100 cross-validation run) and trains on the same
# 40 training wells (fold 0 of 5, seed 0: the held-out wells stay unseen), with the recipe of
# that run (batch 8 random 256-px crops, SGD lr 0.01, 50 warm-up steps, steps x0.1 at 67 % and
# 89 % of the time budget). The trainer validates on fold 0's 10 held-out wells at the end and
# records the metrics in the checkpoint's model card.
#   bash benchmarks/cpu_continue.sh ../shared/data/bbbc010/train runs/cpu 2700
# (WARMUP=10 for a shorter warm-up when continuing an already trained model; MODES=binary for one)
# then, for each mode, if the held-out metrics improved on the bundled model's:
#   python benchmarks/make_bundled.py bundle runs/cpu/<mode>.fold0.pt worms-<mode> \
#     --crossval docs/crossval.json --recipe <mode>-semiconv --note "..."
set -eu
data=${1:?BBBC010 train folder}
out=${2:?output folder}
budget=${3:-2700}
modes=${MODES:-binary brightfield}
mkdir -p "$out"
for mode in $modes; do
  napari-semiconv train --data "$data" --layout bbbc010 --input "$mode" --base "worms-$mode" \
    --folds 5 --fold 0 --time-budget "$budget" --iterations 100000 --batch-size 8 --crop 256 \
    --lr 0.01 --warmup ${WARMUP:-50} --device cpu --checkpoint-every 50 --out "$out/$mode.pt" \
    2>&1 | tee "$out/$mode.log"
done
