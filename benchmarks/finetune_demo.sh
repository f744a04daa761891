#!/usr/bin/env bash
# Measured fine-tuning demonstration (docs/fine-tuning.md): a model trained on synthetic worms
# only, then fine-tuned heads-only on the CPU on 5 real BBBC010 training wells, scored before and
# after on 5 other training wells. Run from the repository root with the package installed.
#   bash benchmarks/finetune_demo.sh ../shared/data/bbbc010/train runs/ft
set -euo pipefail
data=${1:-../shared/data/bbbc010/train}
out=${2:-runs/ft}
synth_s=${SYNTH_S:-540}
tune_s=${TUNE_S:-540}
train_wells=A01,A02,A03,A04,A05
eval_wells=B01,B02,B03,B04,B05
mkdir -p "$out"
t0=$(date +%s)
napari-semiconv train --synthetic 1.0 --input binary --backbone resnet18 --iterations 100000 \
  --time-budget "$synth_s" --batch-size 4 --crop 192 --warmup 20 --device cpu \
  --checkpoint-every 1000000 --out "$out/synthetic.pt" | tail -n 2
t1=$(date +%s)
napari-semiconv evaluate --model "$out/synthetic.pt" --data "$data" --layout bbbc010 \
  --wells "$eval_wells" --device cpu --json | tail -n 1 > "$out/before.json"
t2=$(date +%s)
napari-semiconv train --base "$out/synthetic.pt" --data "$data" --layout bbbc010 --input binary \
  --wells "$train_wells" --heads-only --iterations 100000 --time-budget "$tune_s" \
  --batch-size 4 --crop 192 --warmup 10 --lr 0.005 --device cpu --checkpoint-every 1000000 \
  --out "$out/finetuned.pt" | tail -n 2
t3=$(date +%s)
napari-semiconv evaluate --model "$out/finetuned.pt" --data "$data" --layout bbbc010 \
  --wells "$eval_wells" --device cpu --json | tail -n 1 > "$out/after.json"
t4=$(date +%s)
echo "synthetic training $((t1 - t0)) s; evaluation $((t2 - t1)) s; fine-tuning $((t3 - t2)) s; evaluation $((t4 - t3)) s"
echo "before: $(cat "$out/before.json")"
echo "after:  $(cat "$out/after.json")"
