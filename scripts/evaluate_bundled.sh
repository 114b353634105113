#!/usr/bin/env bash
# The evaluations behind Resources/MODEL_CARD.md, exactly as run.
# Usage: scripts/evaluate_bundled.sh DEVDATA OUTPUT
# DEVDATA is the output of scripts/prepare_dev_data.py; the bundled models are used.
set -euo pipefail
data=$1
out=$2
for kind in box point; do
  # Interactive, one prompted slice, on structures kept out of training (MR organs) and
  # on the lung tumours (kept out too).
  wsicl evaluate --dataset "$data/ts_mr" --model $kind --mode interactive \
    --prompts-per-image 1 --draws 3 --seed 0 --quiet --output "$out/$kind-ts_mr-interactive"
  wsicl evaluate --dataset "$data/lung" --model $kind --mode interactive \
    --prompts-per-image 1 --draws 5 --seed 0 --quiet --output "$out/$kind-lung-interactive"
  # In context, 5 prompted slices per context image, held-out pairs in both directions.
  for pair in brain lung; do
    wsicl evaluate --dataset "$data/$pair" --model $kind --mode icl --context-sizes 1 \
      --prompts-per-image 5 --draws 8 --seed 0 --quiet --output "$out/$kind-$pair-icl"
  done
done
