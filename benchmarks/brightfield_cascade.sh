#!/usr/bin/env bash
# The recipe of the bundled worms-brightfield (a cascade): a foreground U-Net trained on the
# bright-field images of the 40 training wells outside fold 0 (kfold_wells, seed 0), put in front
# of the bundled worms-binary (trained on the same 40 wells); with STAGE2 steps > 0 (the bundled
# file: STAGE2=4000) that U-Net trained further with intensity jitter 0.3 and lr 1e-3, and with
# STAGE3 seconds > 0 (the bundled file: 1800) further still at lr 5e-4 (out/cascade-stage3.pt;
# what FINETUNE then starts from); then, with FINETUNE seconds > 0,
# the whole cascade trained on those wells (the detector on the U-Net's own maps, the U-Net on
# its loss) with the recipe of benchmarks/cpu_continue.sh. Fold 0's 10 wells stay unseen and
# are what the trainer validates on at the end.
#   STAGE2=4000 STAGE3=1800 bash benchmarks/brightfield_cascade.sh ../shared/data/bbbc010/train runs/fg 4000
# then evaluate and bundle (see docs/benchmarks.md):
#   napari-semiconv evaluate --model runs/fg/cascade.pt --data ../shared/data/bbbc010/train \
#     --wells A02,A04,A08,A10,A19,B06,B12,B15,B22,C01 --device cpu --json
set -eu
data=${1:?BBBC010 train folder}
out=${2:?output folder}
steps=${3:-4000}
finetune=${4:-0}
device=${DEVICE:-cpu}
fold0=A02,A04,A08,A10,A19,B06,B12,B15,B22,C01
mkdir -p "$out"
train_wells=$(python -c "
from napari_semiconv.core.data.bbbc010 import list_wells
held = set('$fold0'.split(','))
print(','.join(w for w in list_wells('$data') if w not in held))")
napari-semiconv train-foreground --data "$data" --wells "$train_wells" --val-wells "$fold0" \
  --detector worms-binary --steps "$steps" --device "$device" --out "$out/cascade.pt" \
  2>&1 | tee "$out/cascade.log"
cascade="$out/cascade.pt"
if [ "${STAGE2:-0}" != 0 ]; then
  napari-semiconv train-foreground --data "$data" --wells "$train_wells" --val-wells "$fold0" \
    --detector worms-binary --foreground-from "$cascade" --steps "$STAGE2" --lr 1e-3 \
    --jitter 0.3 --device "$device" --out "$out/cascade-stage2.pt" 2>&1 | tee "$out/stage2.log"
  cascade="$out/cascade-stage2.pt"
fi
if [ "${STAGE3:-0}" != 0 ]; then  # seconds (the bundled file: 1800, 3650 steps on a 2-core CPU)
  napari-semiconv train-foreground --data "$data" --wells "$train_wells" --val-wells "$fold0" \
    --detector worms-binary --foreground-from "$cascade" --time-budget "$STAGE3" --lr 5e-4 \
    --jitter 0.3 --device "$device" --out "$out/cascade-stage3.pt" 2>&1 | tee "$out/stage3.log"
  cascade="$out/cascade-stage3.pt"
fi
if [ "$finetune" != 0 ]; then
  napari-semiconv train --data "$data" --layout bbbc010 --input brightfield \
    --base "$cascade" --folds 5 --fold 0 --time-budget "$finetune" --iterations 100000 \
    --batch-size 8 --crop 256 --lr 0.01 --warmup 10 --device "$device" --checkpoint-every 50 \
    --out "$out/cascade-tuned.pt" 2>&1 | tee "$out/cascade-tuned.log"
fi
