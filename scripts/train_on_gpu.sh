#!/usr/bin/env bash
# Trains the bundled box and point models side by side on one GPU within a time budget.
#
# Usage: scripts/train_on_gpu.sh SOURCES.pt OUT_DIR [MINUTES]   (default 10 minutes)
#
# SOURCES.pt is the bundle of scripts/make_sources_bundle.py: the script needs nothing
# beyond torch, numpy and scipy (no SimpleITK, no data files). Each model resumes from
# the bundled weights (or from OUT_DIR/<kind>-run/last.pt when OUT_DIR holds one), trains
# with the crop recipe of wsicl.training.episode_training (precision auto: bfloat16 autocast
# on CUDA), and writes float16 weights to OUT_DIR/<kind>.pt every 2 minutes and at the end,
# with its log in OUT_DIR/<kind>.log (every minute: episodes/s, L = 1-equivalent episodes/s,
# the share of time spent making data, achieved TFLOP/s). First, PROFILE_STEPS (default 3)
# steps of each part of a step are measured apart into OUT_DIR/profile.log (engine alone,
# network alone, whole steps). Score the results with scripts/dev_benchmark.py (needs
# SimpleITK).
# Episodes are made ahead by WORKERS (default 6) processes per model, each with its own
# episode engine on the GPU (batches reach the trainer without a copy).
# Environment: BATCH (episodes per step, default 24), RUN_DIR (full checkpoints with
# optimiser state, default /tmp/wsicl-train), DEVICE (default auto), INIT_DIR (a folder
# with box.pt and point.pt to start from; default: the bundled models), EXTRA (more options of wsicl.training.episode_training).
set -euo pipefail
cd "$(dirname "$0")/.."
sources=$1
out=$2
minutes=${3:-10}
export PYTHONPATH="$PWD/WSICLSegment${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
if [ "${PROFILE_STEPS:-3}" -gt 0 ]; then
  python3 -m wsicl.training.episode_training --sources "$sources" --prompt box --init box \
    --output "${RUN_DIR:-/tmp/wsicl-train}/profile" --batch "${BATCH:-24}" \
    --device "${DEVICE:-auto}" --profile "${PROFILE_STEPS:-3}" ${EXTRA:-} >"$out/profile.log" 2>&1
  tail -n 1 "$out/profile.log"
fi
pids=()
for kind in box point; do
  init=$kind
  if [ -n "${INIT_DIR:-}" ]; then init="$INIT_DIR/$kind.pt"; fi
  python3 -m wsicl.training.episode_training --sources "$sources" --prompt "$kind" \
    --init "$init" --output "${RUN_DIR:-/tmp/wsicl-train}/$kind" \
    --export "$out/$kind.pt" --batch "${BATCH:-24}" --minutes "$minutes" \
    --device "${DEVICE:-auto}" --checkpoint-seconds 120 --workers "${WORKERS:-6}" \
    ${EXTRA:-} >"$out/$kind.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$out"/*.log
exit $status
