#!/usr/bin/env bash
# Starts the background training run of a development session, so that training
# accumulates from session to session on CPUs where bfloat16 is native (AMX or AVX512-BF16).
#
# Usage: scripts/train_in_background.sh SHARED_DATA RUN_DIR MINUTES [box|point]
#
# - Where `wsicl.device.native_bf16_cpu()` is False it says so and starts nothing (fp32
#   training is not worth a core there yet; FORCE=1 starts it anyway).
# - RUN_DIR/sources.pt is made once from SHARED_DATA (../shared/data) and the ICBM 2009a
#   template in the nilearn 0.14.1 wheel (downloaded with pip into RUN_DIR/mni).
# - The run resumes from RUN_DIR/KIND/last.pt (weights, optimiser, step) when this machine
#   kept it, else starts from the bundled KIND weights; one thread, niced, so the session's
#   own work keeps the other core; float16 weights to RUN_DIR/KIND/export.pt every 5
#   minutes and at the end, its log in RUN_DIR/KIND/train.log. Prints the process id.
# Environment: LR (default 2e-4), SEED (default: the seconds of the clock), BATCH (4), INIT
# (the weights a new run starts from: default the bundled KIND model; a point run from
# scratch collapses, so `INIT=box` starts it from the box weights), LOSS (default bce_dice
# for box, balanced for point: see wsicl.training.losses), WORKERS (default 0: episodes made
# in the training thread; 1 moves them to a process of their own, 1.26x the episodes/s in
# bf16 but a second busy core: for a machine left to train, see the model card).
# Then score RUN_DIR/KIND/export.pt with scripts/dev_benchmark.py against the bundled model
# and bundle it (scripts/bundle_model.py) only if it is better in both modes.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1
run=$2
minutes=$3
kind=${4:-box}
export PYTHONPATH="$PWD/WSICLSegment${PYTHONPATH:+:$PYTHONPATH}"
native=$(python3 -c "import wsicl.device as d; print(d.native_bf16_cpu())")
if [ "$native" != "True" ] && [ "${FORCE:-0}" != "1" ]; then
  echo "bfloat16 is not native on this CPU: no background training (FORCE=1 starts it)"
  exit 0
fi
mkdir -p "$run/$kind"
if [ ! -f "$run/sources.pt" ]; then
  mni="$run/mni/nilearn/datasets/data"
  if [ ! -d "$mni" ]; then
    python3 -m pip download --quiet --no-deps nilearn==0.14.1 -d "$run/mni"
    python3 - "$run/mni" <<'EOF'
import glob, sys, zipfile
wheel = zipfile.ZipFile(glob.glob(f"{sys.argv[1]}/nilearn-*.whl")[0])
for name in wheel.namelist():
    if "mni_icbm152" in name and "09a" in name:
        wheel.extract(name, sys.argv[1])
EOF
  fi
  python3 scripts/make_sources_bundle.py "$data" "$mni" "$run/sources.pt" >/dev/null
fi
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup nice -n 5 python3 -m wsicl.training.episode_training \
  --sources "$run/sources.pt" --output "$run/$kind" --init "${INIT:-$kind}" --prompt "$kind" \
  --loss "${LOSS:-$([ "$kind" = point ] && echo balanced || echo bce_dice)}" \
  --batch "${BATCH:-4}" --workers "${WORKERS:-0}" --lr "${LR:-2e-4}" --warmup 5 --minutes "$minutes" \
  --seed "${SEED:-$(date +%S)}" --checkpoint-seconds 300 --export "$run/$kind/export.pt" \
  >>"$run/$kind/train.log" 2>&1 &
echo "$!"
