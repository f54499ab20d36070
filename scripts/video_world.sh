#!/usr/bin/env bash
# A world from footage alone: record Freedoom play, keep only the video (the actions
# are thrown away), import it with camera motion estimated from the pixels, train a
# world on that, and evaluate it. Then `neuralworld play $WORK/run/world` plays it
# with two-stick controls (WASD moves, the mouse looks).
#
#   bash scripts/video_world.sh                 # ~20 clips of 500 frames, tiny preset
#   INIT_AE=runs/doom/world bash scripts/video_world.sh   # start from a Doom world's autoencoder
#
# Every step is skipped when its output exists, so a killed run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
NW=("$PY" -m neuralworld)
WORK="${WORK:-runs/video_world}"
CLIPS="${CLIPS:-20}"               # videos to film
FRAMES="${FRAMES:-500}"            # frames per video
SOURCE_RES="${SOURCE_RES:-120x160}"  # Doom's own 4:3 frame: what a screen capture would hold
RES="${RES:-64x64}"                # the world's resolution (centre crop of the footage)
PRESET="${PRESET:-tiny}"
INIT_AE="${INIT_AE:-}"             # a trained world of the same look, to skip most of the autoencoder stage
TRAIN_ARGS="${TRAIN_ARGS:-}"

mkdir -p "$WORK/videos"
if [ ! -f "$WORK/videos/done" ]; then
  echo "== film $CLIPS clips of Freedoom MAP01 at $SOURCE_RES"
  [ -d "$WORK/play" ] || "${NW[@]}" record --env doom/freedoom_map01 --episodes "$CLIPS" --max-steps "$FRAMES" --resolution "$SOURCE_RES" \
    --seed 101 --out "$WORK/play" --quiet
  "$PY" - "$WORK" <<'PY'
import sys
from pathlib import Path
from neuralworld.data.store import Dataset
from neuralworld.data.view import write_video

work = Path(sys.argv[1])
ds = Dataset(work / "play")
for i in range(ds.num_episodes):  # pixels only: what a video file keeps of a playthrough
    write_video(iter(ds.episode(i)["frames"]), work / "videos" / f"clip{i:03d}.mp4", fps=ds.spec.fps)
(work / "videos" / "done").write_text(f"{ds.num_episodes} clips\n")
PY
fi

if [ ! -d "$WORK/data" ]; then
  echo "== import the footage; motion from visual odometry"
  "${NW[@]}" import-video "$WORK"/videos/clip*.mp4 --resolution "$RES" --hfov 90 --out "$WORK/data"
fi
"${NW[@]}" data info "$WORK/data"

echo "== train ($PRESET)"
INIT=()
[ -n "$INIT_AE" ] && INIT=(--init-autoencoder "$INIT_AE")
RESUME=()
[ -f "$WORK/run/run.json" ] && RESUME=(--resume)
# shellcheck disable=SC2086
"${NW[@]}" train "$WORK/data" --preset "$PRESET" --out "$WORK/run" "${INIT[@]}" "${RESUME[@]}" $TRAIN_ARGS

echo "== evaluate"
"${NW[@]}" eval "$WORK/run" --episodes 3 --sampler fast --out "$WORK/run/eval"
echo "play it: ${NW[*]} play $WORK/run/world"
