#!/usr/bin/env bash
# One device call on fold 0 of the BBBC010 training wells (5 folds, seed 0: the 40 wells outside
# fold 0 train, its 10 wells A02 A04 A08 A10 A19 B06 B12 B15 B22 C01 validate):
#   1. the GPU speed benchmark of $SPEED_MODELS against torchvision's R50-FPN;
#   2. in parallel on the one GPU, each validated on fold 0's held-out wells when its time is up:
#      - worms-$MODE trained further from its bundled weights (10 warm-up steps),
#      - with ABLATION=1: semi-conv and plain Mask R-CNN from scratch, identical recipe;
#      recipe: batch 8 random 256-px crops, SGD lr 0.01, x0.1 at 67 % and 89 % of the budget;
#   3. the continued model stripped to fp16 and split into parts of < 16 MB for $OUT.
# Data in gpu_data/bbbc010/train (benchmarks/prepare_gpu_data.py): eachworm/ (binary input is
# the masks' union), and for MODE=brightfield images/ with the w2 TIFFs, zlib-compressed;
# wheels in .whl/. Only 64 MiB travel and each bundled model takes 28: a bright-field call
# leaves worms-binary.pt behind to make room: `git rm -q --cached` it and list it in
# .git/info/exclude for the call, `git reset -q` it and remove that line afterwards.
#   MODE=binary DEADLINE=500 bash benchmarks/gpu_fold0.sh     (fourth session, first call)
#   MODE=brightfield ABLATION=0 SPEED_MODELS=worms-brightfield DEADLINE=210 RESERVE=60 bash ...
#   DEVICE=cpu DEADLINE=200 SPEED=0 ...                       (a dry run on a CPU)
set -u
start=$(date +%s)
source benchmarks/gpu_env.sh
dev=${DEVICE:-cuda}
mode=${MODE:-binary}
data=${DATA:-gpu_data/bbbc010/train}
python3 -c "import pycocotools, platformdirs, napari_semiconv.core.training" || exit 1
if [ "${SPEED:-1}" = "1" ]; then
  timeout 200 python3 benchmarks/speed.py --device "$dev" --threads 16 \
    --models "${SPEED_MODELS:-worms-brightfield,worms-binary}" --json-out "$out/speed_gpu.json" \
    2>&1 | tail -n 8
fi
mkdir -p runs/gpu
# what is left of the deadline, less validation (~40 s) and packing (~20 s)
budget=$(( ${DEADLINE:-540} - ($(date +%s) - start) - ${RESERVE:-90} ))
echo "[gpu_fold0] training budget ${budget} s per run"
common=(train --data "$data" --layout bbbc010 --input "$mode" --folds 5 --fold 0
  --time-budget "$budget" --iterations 1000000 --batch-size 8 --crop 256 --lr 0.01
  --device "$dev")
runs=(continue)
python3 -m napari_semiconv "${common[@]}" --base "worms-$mode" --warmup 10 \
  --checkpoint-every 400 --out runs/gpu/continue.pt >runs/gpu/continue.log 2>&1 &
if [ "${ABLATION:-1}" = "1" ]; then
  runs+=(semiconv plain)
  python3 -m napari_semiconv "${common[@]}" --warmup 50 --checkpoint-every 1000000 \
    --out runs/gpu/semiconv.pt >runs/gpu/semiconv.log 2>&1 &
  python3 -m napari_semiconv "${common[@]}" --warmup 50 --checkpoint-every 1000000 \
    --no-semiconv --out runs/gpu/plain.pt >runs/gpu/plain.log 2>&1 &
fi
wait
tail -n 3 runs/gpu/*.log
if [ -f runs/gpu/continue.fold0.pt ]; then
  python3 benchmarks/make_bundled.py strip runs/gpu/continue.fold0.pt "runs/gpu/worms-$mode.pt" &&
    split -b 15m "runs/gpu/worms-$mode.pt" "$out/worms-$mode.pt.part-"
fi
RUNS="${runs[*]}" python3 - <<'PY' >"$out/cards.json"
import json
import os
from napari_semiconv.core.checkpoint import load_checkpoint
cards = {}
for run in os.environ["RUNS"].split():
    try:
        card = load_checkpoint(f"runs/gpu/{run}.fold0.pt").card
    except Exception as exc:  # report, never stop: the other runs' results still matter
        cards[run] = {"error": str(exc)}
        continue
    cards[run] = {k: card.get(k) for k in ("metrics", "step", "recipe", "data", "fold")}
print(json.dumps(cards, indent=1, default=str))
PY
grep -h '"AP"' "$out/cards.json" | head; tar czf "$out/logs.tgz" runs/gpu/*.log
echo "[gpu_fold0] done in $(( $(date +%s) - start )) s"; ls -la "$out"
