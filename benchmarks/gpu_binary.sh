#!/usr/bin/env bash
# One device call for the binary protocol, for a working tree that cannot also carry the
# bright-field images (the two bundled models already take 56 of the 64 MiB that travel):
#   1. the GPU speed benchmark of both bundled models against torchvision's R50-FPN;
#   2. in parallel on the one GPU, each on the 40 training wells outside fold 0 (seed 0), each
#      validated on fold 0's 10 held-out wells when its time is up:
#      - worms-binary trained further from its bundled weights (10 warm-up steps),
#      - semi-conv and plain Mask R-CNN from scratch with the identical recipe (the ablation);
#      recipe: batch 8 random 256-px crops, SGD lr 0.01, x0.1 at 67 % and 89 % of the budget;
#   3. the continued model stripped to fp16 and split into parts of < 16 MB for $OUT.
# Needs gpu_data/bbbc010/train/eachworm (binary input is the masks' union) and .whl/.
#   DEADLINE=540 bash benchmarks/gpu_binary.sh     (seconds this script may take in all)
#   DEVICE=cpu DEADLINE=200 SPEED=0 ...            (a dry run on a CPU)
set -u
start=$(date +%s)
source benchmarks/gpu_env.sh
dev=${DEVICE:-cuda}
data=${DATA:-gpu_data/bbbc010/train}
python3 -c "import pycocotools, platformdirs, napari_semiconv.core.training" || exit 1
if [ "${SPEED:-1}" = "1" ]; then
  timeout 200 python3 benchmarks/speed.py --device "$dev" --threads 16 \
    --models worms-brightfield,worms-binary --json-out "$out/speed_gpu.json" 2>&1 | tail -8
fi
mkdir -p runs/gpu
# what is left of the deadline, less validation (~40 s) and packing (~20 s)
budget=$(( ${DEADLINE:-540} - ($(date +%s) - start) - ${RESERVE:-90} ))
echo "[gpu_binary] training budget ${budget} s per run"
common=(train --data "$data" --layout bbbc010 --input binary --folds 5 --fold 0
  --time-budget "$budget" --iterations 1000000 --batch-size 8 --crop 256 --lr 0.01
  --device "$dev")
python3 -m napari_semiconv "${common[@]}" --base worms-binary --warmup 10 \
  --checkpoint-every 400 --out runs/gpu/continue.pt >runs/gpu/continue.log 2>&1 &
python3 -m napari_semiconv "${common[@]}" --warmup 50 --checkpoint-every 1000000 \
  --out runs/gpu/semiconv.pt >runs/gpu/semiconv.log 2>&1 &
python3 -m napari_semiconv "${common[@]}" --warmup 50 --checkpoint-every 1000000 \
  --no-semiconv --out runs/gpu/plain.pt >runs/gpu/plain.log 2>&1 &
wait
tail -n 3 runs/gpu/*.log
if [ -f runs/gpu/continue.fold0.pt ]; then
  python3 benchmarks/make_bundled.py strip runs/gpu/continue.fold0.pt runs/gpu/worms-binary.pt &&
    split -b 15m runs/gpu/worms-binary.pt "$out/worms-binary.pt.part-"
fi
python3 - <<'PY' >"$out/cards.json"
import json
from napari_semiconv.core.checkpoint import load_checkpoint
cards = {}
for run in ("continue", "semiconv", "plain"):
    try:
        card = load_checkpoint(f"runs/gpu/{run}.fold0.pt").card
    except Exception as exc:  # report, never stop: the other runs' results still matter
        cards[run] = {"error": str(exc)}
        continue
    cards[run] = {k: card.get(k) for k in ("metrics", "step", "recipe", "data", "fold")}
print(json.dumps(cards, indent=1, default=str))
PY
grep -h '"AP"' "$out/cards.json" | head; tar czf "$out/logs.tgz" runs/gpu/*.log
echo "[gpu_binary] done in $(( $(date +%s) - start )) s"; ls -la "$out"
