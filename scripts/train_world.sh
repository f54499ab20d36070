#!/usr/bin/env bash
# Record, train and evaluate a world in one resumable job, then collect what to ship.
#
#   OUT=out/world_job bash scripts/train_world.sh            # everything, with the defaults below
#   MODEL=field RES=64x64 EPISODES=100 OUT=out/field_job bash scripts/train_world.sh   # the field world (ray renderer):
#                                                             # L1, then the critic stage from it (no U-Net baseline)
#   PRESET=tiny EPISODES=8 MAX_STEPS=200 RES=64x64 ... bash scripts/train_world.sh   # a quick check
#
# Each stage skips what is already done (a finished dataset, a finished training
# stage), so running the script again after an interruption resumes it. On a GPU
# machine with many cores this records in parallel and trains on the GPU; the same
# script runs on a CPU, only slower.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-python3}"
ENV_NAME="${ENV_NAME:-doom/freedoom_map01}"
EPISODES="${EPISODES:-240}"
MAX_STEPS="${MAX_STEPS:-1000}"
WORKERS="${WORKERS:-$(nproc)}"
RES="${RES:-128x128}"
PRESET="${PRESET:-small}"
MODEL="${MODEL:-world}"               # world (latent) or field
CRITIC_STEPS="${CRITIC_STEPS:-1200}"  # MODEL=field: the critic stage's steps after the L1 stage
WORK="${WORK:-/tmp/neuralworld-job}"
OUT="${OUT:?set OUT to the folder that receives the world and its report}"
TRAIN_ARGS="${TRAIN_ARGS:-}"          # e.g. "--autoencoder-steps 6000 --dynamics-steps 20000 --distill-steps 1500"
BASELINE="${BASELINE:-1}"             # 1: also train the U-Net baseline with the dynamics' budget, for the report
BASELINE_ARGS="${BASELINE_ARGS:-}"    # e.g. "--dynamics-steps 20000" (the same steps as the world's dynamics)
EVAL_ARGS="${EVAL_ARGS:---episodes 8}"

mkdir -p "$WORK" "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*"; }

have_frames=$($PY -m neuralworld data info "$WORK/data" --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["episodes"])' 2>/dev/null || echo 0)
if [ "$have_frames" -lt "$EPISODES" ]; then
  log "recording $((EPISODES - have_frames)) episodes of $ENV_NAME on $WORKERS workers"
  $PY -m neuralworld record --env "$ENV_NAME" --episodes $((EPISODES - have_frames)) --workers "$WORKERS" \
      --max-steps "$MAX_STEPS" --resolution "$RES" --out "$WORK/data" --quiet
fi
$PY -m neuralworld data info "$WORK/data"

resume=""
if [ "$MODEL" = field ]; then
  [ -f "$WORK/run_l1/run.json" ] && resume="--resume"
  [ -f "$WORK/run_l1/summary.json" ] || {
    log "training the field ($PRESET, ray renderer, L1) $resume"
    # shellcheck disable=SC2086
    $PY -m neuralworld train "$WORK/data" --model field --field-renderer ray --preset "$PRESET" --out "$WORK/run_l1" $resume $TRAIN_ARGS --quiet
  }
  resume=""
  [ -f "$WORK/run/run.json" ] && resume="--resume"
  log "the critic stage from it ($CRITIC_STEPS steps) $resume"
  $PY -m neuralworld train "$WORK/data" --model field --field-renderer ray --preset "$PRESET" --out "$WORK/run" \
      --init-world "$WORK/run_l1" --field-steps "$CRITIC_STEPS" --field-lr 5e-4 --field-objective adv_weight=0.02 $resume --quiet
  BASELINE=0
else
  [ -f "$WORK/run/run.json" ] && resume="--resume"
  log "training ($PRESET) $resume"
  # shellcheck disable=SC2086
  $PY -m neuralworld train "$WORK/data" --preset "$PRESET" --out "$WORK/run" $resume $TRAIN_ARGS --quiet
fi

baseline=()
if [ "$BASELINE" = 1 ]; then
  resume_b=""
  [ -f "$WORK/baseline/run.json" ] && resume_b="--resume"
  log "training the U-Net baseline ($PRESET) $resume_b"
  # shellcheck disable=SC2086
  $PY -m neuralworld train "$WORK/data" --model unet-baseline --preset "$PRESET" --out "$WORK/baseline" $resume_b $BASELINE_ARGS --quiet
  baseline=(--baseline "$WORK/baseline")
fi

log "evaluating: fidelity (metrics.json, rollout.mp4), then the whole suite (report/)"
# shellcheck disable=SC2086
$PY -m neuralworld eval "$WORK/run" --data "$WORK/data" --out "$WORK/eval" $EVAL_ARGS
# shellcheck disable=SC2086
$PY -m neuralworld eval "$WORK/run" --data "$WORK/data" --report "$WORK/report" "${baseline[@]}" $EVAL_ARGS

log "collecting into $OUT"
# the world travels as a tar in parts under 16 MiB (rejoin: cat world.tar.part* | tar x)
tar -C "$WORK/run" -cf "$WORK/world.tar" world
split -b 15M -d "$WORK/world.tar" "$OUT/world.tar.part"
cp "$WORK/eval/metrics.json" "$OUT/metrics.json"
tar -C "$WORK" -cf "$OUT/report.tar" report
cp "$WORK/run/metrics.jsonl" "$OUT/train_metrics.jsonl"
[ -f "$WORK/eval/rollout.mp4" ] && cp "$WORK/eval/rollout.mp4" "$OUT/rollout.mp4"
$PY -m neuralworld data info "$WORK/data" --json > "$OUT/data_info.json"
ls -la "$OUT"
log "done"
