#!/usr/bin/env bash
# A screen of the MDP model through the bench itself: train seed 0 in steps (resuming from
# OUTDIR/ckpt), scoring n = 10 / 25 / 50 / 100 on the bench's test instances after each.
#   bash mdp_screen.sh OUTDIR "200 400 600 800" --mdp-train-episodes 10,25 --mdp hidden_size=256
# OUTDIR/it<N>.txt is the table after N iterations; OUTDIR/progress.log the training progress.
# One model plays every cell (the n = 10 cell's, as in params.yaml) unless the options say else.
set -euo pipefail
out=$1 steps=$2
shift 2
mkdir -p "$out"
for it in $steps; do
  OMP_NUM_THREADS=1 metarl bench rl2 --cells 10 25 50 100 --mdp-seeds 0 --iterations "$it" \
    --mdp-train-episodes 10 \
    --checkpoints "$out/ckpt" --json "$out/it$it.json" --out "$out/it$it.txt" "$@" \
    >/dev/null 2>>"$out/progress.log"
  { echo "after $it iterations:"; grep "RL2 s0" "$out/it$it.txt"; } >> "$out/summary.txt"
done
