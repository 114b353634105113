#!/usr/bin/env bash
# Progressive resizing (the model issue, item 2): one training budget spent mostly on
# small crops, then finished at the model's own 64^3 grid. The network is fully
# convolutional, so weights carry over; each stage starts from the previous stage's export
# with a fresh optimiser, warm-up and cosine decay over its own minutes.
#
# Usage: scripts/train_progressive.sh SOURCES RUN_DIR MINUTES KIND INIT [SCHEDULE]
#   SOURCES: a bundle from scripts/make_sources_bundle.py; KIND: box or point;
#   INIT: the weights to start from (a bundled name or a file);
#   SCHEDULE: SIZE:SHARE of MINUTES per stage (default 32:0.55,48:0.25,64:0.2).
# Environment: LR (default 3e-4), LOSS (default bce_dice for box, balanced for point),
# SEED, BATCH (4), THREADS (1). Stage I writes RUN_DIR/sSIZE/ (last.pt, export.pt,
# train.log); RUN_DIR/export.pt is the last stage's export. Runs in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
sources=$1 run=$2 minutes=$3 kind=$4 init=$5
schedule=${6:-32:0.55,48:0.25,64:0.2}
export PYTHONPATH="$PWD/WSICLSegment${PYTHONPATH:+:$PYTHONPATH}"
loss=${LOSS:-$([ "$kind" = point ] && echo balanced || echo bce_dice)}
for stage in ${schedule//,/ }; do
  size=${stage%%:*}
  stage_minutes=$(python3 -c "print(round($minutes * ${stage##*:}, 2))")
  mkdir -p "$run/s$size"
  OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} python3 -m \
    wsicl.training.episode_training --sources "$sources" --output "$run/s$size" \
    --init "$init" --prompt "$kind" --loss "$loss" --size "$size" --batch "${BATCH:-4}" \
    --lr "${LR:-3e-4}" --warmup 5 --minutes "$stage_minutes" --seed "${SEED:-0}" \
    --checkpoint-seconds 300 --export "$run/s$size/export.pt" >>"$run/s$size/train.log" 2>&1
  init="$run/s$size/export.pt"
done
cp "$init" "$run/export.pt"
echo "$run/export.pt"
