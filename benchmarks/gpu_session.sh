#!/usr/bin/env bash
# The one device call behind docs/benchmarks.md: 5-fold cross-validation of three recipes in
# parallel on one GPU, the bundled models cut from fold 0, and the GPU speed benchmark.
# Run from the repository root on the GPU machine, with the BBBC010 training wells copied to
# gpu_data/bbbc010/train (w2 images, eachworm/, foreground/: benchmarks/prepare_gpu_data.py) and
# wheels for missing packages in .whl/. Only 64 MiB travel: with the two bundled models (56 MiB)
# in the tree, bright-field recipes (the default brightfield-cascade reads the w2 images, 18 MB)
# need worms-binary.pt left behind (see benchmarks/gpu_fold0.sh) and SPEED_MODELS=worms-brightfield
# (the cascade holds its own copy of the binary detector; the CV trains its own detectors).
#   BUDGET=300 bash benchmarks/gpu_session.sh      (BUDGET=0: the speed measurements only)
#   RECIPES=binary-plain,binary-twostage STAGE2_STEPS=1000 ...   (the paper's ablation schedule)
# Time line (15 device minutes in all, the machine's start included): speed ~1.5 min, the
# detectors BUDGET s in parallel plus their validation, then the five cascade folds in parallel,
# FG_BUDGET s of U-Net training each (three stages) plus their evaluation (~1 min).
set -u
source benchmarks/gpu_env.sh
# 1. speed first (a minute): the bundled models end to end (the <= 15 ms target) and the mask paste
python3 benchmarks/speed.py --device "${DEVICE:-cuda}" --threads 16 \
  --models "${SPEED_MODELS:-worms-brightfield,worms-binary}" --json-out runs/speed_gpu.json \
  2>&1 | tail -8
python3 benchmarks/paste_masks.py --device "${DEVICE:-cuda}" --threads 16 2>&1 | tee runs/paste_gpu.txt
cp runs/speed_gpu.json runs/paste_gpu.txt "$out/" 2>/dev/null
if [ "${BUDGET:-300}" = "0" ]; then ls -la "$out"; exit 0; fi
# 2. cross-validation, the bundled models cut from fold 0
python3 benchmarks/crossval.py --data gpu_data/bbbc010/train --out runs/cv \
  --recipes "${RECIPES:-binary-semiconv,binary-plain,brightfield-cascade}" \
  --time-budget "${BUDGET:-300}" --device "${DEVICE:-cuda}" --batch-size "${BATCH:-4}" \
  --crop "${CROP:-0}" --lr "${LR:-0.01}" --extra "${EXTRA:-}" \
  --foreground-budget "${FG_BUDGET:-150}" --stage2-steps "${STAGE2_STEPS:-1000}" \
  2>&1 | tee runs/crossval.log
# fold 0's models (the cascade's last file: its cut chosen on the training wells, else stage 3)
new=""; rm -f runs/worms-binary.pt runs/worms-brightfield.pt
for pair in binary:binary-semiconv.fold0 brightfield:brightfield-cascade.fold0.cut \
            brightfield:brightfield-cascade.fold0.stage3; do
  r=${pair%%:*}; src=runs/cv/${pair#*:}.pt
  if [ -f "$src" ] && [ ! -f "runs/worms-$r.pt" ]; then
    python3 benchmarks/make_bundled.py strip "$src" "runs/worms-$r.pt"
    split -b 15m "runs/worms-$r.pt" "$out/worms-$r.pt.part-"
    new="$new${new:+,}runs/worms-$r.pt"
  fi
done
# 3. speed of the newly trained models
if [ -n "$new" ]; then
  python3 benchmarks/speed.py --device "${DEVICE:-cuda}" --threads 16 \
    --models "$new" --json-out runs/speed_gpu_new.json 2>&1 | tail -8
fi
tar czf "$out/results.tgz" runs/crossval.log runs/cv/*.json runs/cv/*.md runs/cv/*.log runs/speed_gpu*.json 2>/dev/null; cp runs/cv/crossval.json runs/speed_gpu*.json "$out/" 2>/dev/null
ls -la "$out"
