#!/usr/bin/env bash
# The Take Cover experiment (World Models' on our engine), start to finish in one resumable job:
#   1. record random-policy episodes of doom/take_cover
#   2. train a warp world on them (its heads learn reward and death)
#   3. its heads on held-out real episodes (neuralworld eval, the heads part)
#   4. PPO (Stable-Baselines3) trained only inside the world
#   5. PPO trained in real ViZDoom for the same number of environment steps
#   6. random, dream-trained and real-trained policies, each scored over 100 real episodes
#
#   OUT=runs/take-cover bash scripts/take_cover.sh
#   EPISODES=6 WORLD_STEPS=20 AGENT_STEPS=256 EVAL_EPISODES=2 OUT=/tmp/tc bash scripts/take_cover.sh   # a quick check
#
# Every stage skips what is done and resumes what is half done (the dataset appends the
# missing episodes, training and PPO continue from their checkpoints), so running it again
# after an interruption goes on. Figures land in OUT/results.jsonl, one JSON line a row.
set -euo pipefail
cd "$(dirname "$0")/.."

NW="${NW:-.venv/bin/neuralworld}"
OUT="${OUT:?set OUT to the experiment folder}"
EPISODES="${EPISODES:-400}"          # random-policy episodes recorded (about 130 steps each)
RES="${RES:-64x64}"
PRESET="${PRESET:-mini}"
WORLD_STEPS="${WORLD_STEPS:-6000}"   # warp training steps
AGENT_STEPS="${AGENT_STEPS:-100000}" # PPO environment steps, in the dream and in the engine alike
AGENT_ENVS="${AGENT_ENVS:-16}"       # playthroughs of the world in one batched call
REAL_ENVS="${REAL_ENVS:-4}"          # copies of the engine
EVAL_EPISODES="${EVAL_EPISODES:-100}"
SEED="${SEED:-0}"
log() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$OUT"

have=$(.venv/bin/python -m neuralworld data info "$OUT/data" --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["episodes"])' 2>/dev/null || echo 0)
if [ "$have" -lt "$EPISODES" ]; then
  log "1. recording $((EPISODES - have)) random-policy episodes of doom/take_cover"
  $NW record --env doom/take_cover --policy random --episodes $((EPISODES - have)) --resolution "$RES" \
      --workers 2 --seed $((10000 + have)) --out "$OUT/data" --quiet
fi

if [ ! -f "$OUT/world/summary.json" ]; then
  resume=""; [ -f "$OUT/world/run.json" ] && resume="--resume"
  log "2. training the world ($PRESET, $WORLD_STEPS steps) $resume"
  $NW train "$OUT/data" --model warp --preset "$PRESET" --warp-steps "$WORLD_STEPS" --out "$OUT/world" \
      --validate-every 500 --checkpoint-every 100 --quiet $resume
fi

if [ ! -f "$OUT/heads/metrics.json" ]; then
  log "3. the termination head on held-out real episodes"
  $NW eval "$OUT/world" --data "$OUT/data" --report "$OUT/heads" --skip fidelity,control,stability,memory,speed,probes
fi

agent() {  # agent NAME SOURCE [extra args]: train, resuming from checkpoints, unless done
  local name=$1 source=$2; shift 2
  local done
  done=$(.venv/bin/python -c "import json,sys; print(json.load(open('$OUT/$name/agent.json'))['timesteps'] >= $AGENT_STEPS)" 2>/dev/null || echo False)
  [ "$done" = "True" ] && return 0
  local resume=""; [ -d "$OUT/$name/checkpoints" ] && resume="--resume"
  log "PPO in $source: $AGENT_STEPS steps $resume"
  $NW agent train "$source" --out "$OUT/$name" --steps "$AGENT_STEPS" --seed "$SEED" --checkpoint-every 10000 --quiet $resume "$@"
}
log "4. PPO in the dream"
agent agent-dream "$OUT/world/world" --envs "$AGENT_ENVS"
log "5. PPO in the real engine"
agent agent-real doom/take_cover --envs "$REAL_ENVS" --resolution "$RES"

log "6. scoring in real ViZDoom, $EVAL_EPISODES episodes each"
for who in random agent-dream agent-real; do
  if ! grep -q "\"row\": \"$who\"" "$OUT/results.jsonl" 2>/dev/null; then
    agent_path="$OUT/$who"; [ "$who" = random ] && agent_path=random
    line=$($NW agent eval "$agent_path" --env doom/take_cover --episodes "$EVAL_EPISODES" --seed 1 --resolution "$RES" --all)
    echo "$line" | .venv/bin/python -c "import json,sys; r=json.load(sys.stdin); r['row']='$who'; print(json.dumps(r))" >> "$OUT/results.jsonl"
  fi
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/results.jsonl")]
print("| policy | mean tics survived | std | mean steps |")
print("|---|---|---|---|")
for r in rows:
    print(f"| {r['row']} | {r['mean_return']:.0f} | {r['std_return']:.0f} | {r['mean_length']:.0f} |")
PY
