#!/usr/bin/env bash
# Semi-conv against plain Mask R-CNN with the paper's multistage schedule (sec. 4.4: "Mask R-CNN
# is trained until convergence and then our embeddings are attached and fine-tuned"), on fold 0
# of the BBBC010 training wells (5 folds, seed 0: 40 wells train, A02 A04 A08 A10 A19 B06 B12
# B15 B22 C01 are held out and only report):
#   stage 1: a plain Mask R-CNN: worms-binary without its embedding head and σ, trained plain
#            for $STAGE1 seconds (its mask head learns to do without eq. 10's term); with
#            BASE=none from scratch instead, as the paper (a GPU's work: to convergence);
#   stage 2: from stage 1, two arms with the identical recipe ($ITERS steps, the same batches,
#            seed $SEED and learning rate), side by side with $THREADS threads each:
#            plain (continued as is) and semi-conv (embedding head and σ attached fresh);
#   then `napari-semiconv evaluate --json` of both arms on fold 0 (binary defaults), a log each.
# Recipe as bundled: batch 8 random 256-px crops, SGD lr 0.01, 10 warm-up steps, x0.1 at 67 %
# and 89 % of the run.
#   bash benchmarks/ablation_two_stage.sh ../shared/data/bbbc010/train runs/abl
#   (ninth session, this CPU: STAGE1=1800, then SEED=0 and SEED=1; DEVICE=cuda for a GPU)
set -eu
data=${1:?BBBC010 train folder}
out=${2:?output folder}
dev=${DEVICE:-cpu}
fold0=A02,A04,A08,A10,A19,B06,B12,B15,B22,C01
common=(--data "$data" --layout bbbc010 --input binary --folds 5 --fold 0 --batch-size 8
  --crop 256 --lr 0.01 --warmup "${WARMUP:-10}" --device "$dev" --checkpoint-every 50)
mkdir -p "$out"
if [ ! -f "$out/stage1.fold0.pt" ]; then
  base=(--base "${BASE:-worms-binary}")
  [ "${BASE:-worms-binary}" = "none" ] && base=()
  napari-semiconv train "${common[@]}" "${base[@]}" --no-semiconv \
    --time-budget "${STAGE1:-1800}" --iterations 1000000 --out "$out/stage1.pt" >"$out/stage1.log" 2>&1
fi
export OMP_NUM_THREADS=${THREADS:-1}
seed=${SEED:-0}
for arm in plain semiconv; do
  flag=()
  [ "$arm" = plain ] && flag=(--no-semiconv)
  napari-semiconv train "${common[@]}" --base "$out/stage1.fold0.pt" "${flag[@]}" --seed "$seed" \
    --iterations "${ITERS:-320}" --out "$out/$arm.seed$seed.pt" >"$out/$arm.seed$seed.log" 2>&1 &
done
wait
for arm in plain semiconv; do
  napari-semiconv evaluate --model "$out/$arm.seed$seed.fold0.pt" --data "$data" \
    --wells "$fold0" --device "$dev" --json >"$out/$arm.seed$seed.eval.log" 2>&1 &
done
wait
tail -n 1 "$out"/*.seed"$seed".eval.log
