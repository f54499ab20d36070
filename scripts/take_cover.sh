#!/usr/bin/env bash
# The Take Cover experiment (World Models' on our engine), start to finish in one resumable job:
#   1. record random episodes of doom/take_cover with its own buttons (--policy strafe: no-op,
#      strafe left or right, never turning, as World Models recorded it)
#   2. train a recurrent world on them (World Models' VAE and MDN-LSTM: it draws the fireballs
#      that come at random; its heads learn reward and death)
#   3. its heads on held-out real episodes (neuralworld eval, the heads part)
#   4. a linear controller searched by CMA-ES (the cma library) only inside the world's dream
#   4+. World Models' iterative training, ITERATIONS rounds: the last controller plays the engine
#      (record --agent, a few random choices mixed in) and what it meets is added to the data; a
#      world is trained on all of it (the VAE kept, the MDN-LSTM trained afresh) and a controller
#      searched in its dream. The policy still learns only in dreams; the engine gives the world data.
#   5. the same algorithm in real ViZDoom, for as many real steps as every world was recorded from
#   6. random, dream-trained (each round) and real-trained policies, each scored over 100 real episodes
#
#   OUT=runs/take-cover bash scripts/take_cover.sh
#   EPISODES=6 VAE_STEPS=20 RNN_STEPS=20 GENERATIONS=2 POPULATION=4 ROLLOUTS=2 EVAL_EPISODES=2 \
#       OUT=/tmp/tc bash scripts/take_cover.sh   # a quick check
#
# Every stage skips what is done and resumes what is half done (the dataset appends the
# missing episodes, training and PPO continue from their checkpoints), so running it again
# after an interruption goes on. Figures land in OUT/results.jsonl, one JSON line a row.
set -euo pipefail
cd "$(dirname "$0")/.."

NW="${NW:-.venv/bin/neuralworld}"
OUT="${OUT:?set OUT to the experiment folder}"
EPISODES="${EPISODES:-1200}"         # random episodes recorded (about 170 steps each)
RES="${RES:-64x64}"
PRESET="${PRESET:-mini}"
VAE_STEPS="${VAE_STEPS:-10000}"      # the world's VAE stage
RNN_STEPS="${RNN_STEPS:-4000}"       # the world's MDN-LSTM stage
ACTIONS="${ACTIONS:-noop;strafe_left;strafe_right}"  # the Discrete set (Take Cover's own buttons, and standing still)
GENERATIONS="${GENERATIONS:-40}"     # CMA-ES generations in the dream (more: a dream exploited, see docs/experiments.md)
POPULATION="${POPULATION:-32}"
ROLLOUTS="${ROLLOUTS:-8}"            # dreams per candidate per generation
TEMPERATURE="${TEMPERATURE:-1.15}"   # the dream's temperature (World Models')
ITERATIONS="${ITERATIONS:-1}"        # rounds of record-with-the-controller, world, search (0: World Models' one pass)
ITER_EPISODES="${ITER_EPISODES:-700}" # episodes the controller plays each round (about 350 steps each)
EPSILON="${EPSILON:-0.1}"            # the chance a recorded step is a random one of the actions instead
REAL_STEPS="${REAL_STEPS:-}"         # real steps for CMA-ES in the engine (default: every recording's frames)
EVAL_EPISODES="${EVAL_EPISODES:-100}"
SEED="${SEED:-0}"
log() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$OUT"

have=$(.venv/bin/python -m neuralworld data info "$OUT/data" --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["episodes"])' 2>/dev/null || echo 0)
if [ "$have" -lt "$EPISODES" ]; then
  log "1. recording $((EPISODES - have)) random episodes of doom/take_cover"
  $NW record --env doom/take_cover --policy strafe --episodes $((EPISODES - have)) --resolution "$RES" \
      --workers 2 --seed $((20000 + have)) --out "$OUT/data" --quiet
fi

if [ ! -f "$OUT/world/summary.json" ]; then
  resume=""; [ -f "$OUT/world/run.json" ] && resume="--resume"
  log "2. training the recurrent world ($PRESET, $VAE_STEPS + $RNN_STEPS steps) $resume"
  $NW train "$OUT/data" --model rnn --preset "$PRESET" --vae-steps "$VAE_STEPS" --rnn-steps "$RNN_STEPS" --out "$OUT/world" \
      --validate-every 1000 --checkpoint-every 250 --quiet $resume
fi

if [ ! -f "$OUT/heads/metrics.json" ]; then
  log "3. the termination head on held-out real episodes"
  $NW eval "$OUT/world" --data "$OUT/data" --report "$OUT/heads" --skip fidelity,control,stability,memory,speed,probes
fi

agent() {  # agent NAME SOURCE GENERATIONS STEPS [extra args]: CMA-ES, going on from its last generation, unless done
  local name=$1 source=$2 generations=$3 steps=$4; shift 4
  local done
  done=$(.venv/bin/python -c "import json; m = json.load(open('$OUT/$name/agent.json'))
print(m['generations'] >= $generations or m['timesteps'] >= ${steps:-inf})" 2>/dev/null || echo False)
  [ "$done" = "True" ] && return 0
  local resume=""; [ -f "$OUT/$name/es.pickle" ] && resume="--resume"
  log "CMA-ES in $source: $generations generations ${steps:+or $steps steps} $resume"
  $NW agent train "$source" --algorithm cma --out "$OUT/$name" --generations "$generations" ${steps:+--steps "$steps"} \
      --population "$POPULATION" --rollouts "$ROLLOUTS" --actions "$ACTIONS" --seed "$SEED" --sample-deaths $resume "$@"
}
log "4. CMA-ES in the dream"
agent agent-dream "$OUT/world/world" "$GENERATIONS" "" --temperature "$TEMPERATURE"

info() { .venv/bin/python -m neuralworld data info "$1" --json | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
data="$OUT/data"; player="$OUT/agent-dream"; rows="random agent-dream"
for k in $(seq 1 "$ITERATIONS"); do
  if [ ! -d "$OUT/data-$k" ]; then  # the last round's data, copied, then added to
    log "4.$k. round $k: copying $data"
    rm -rf "$OUT/data-$k.tmp"; cp -r "$data" "$OUT/data-$k.tmp"; mv "$OUT/data-$k.tmp" "$OUT/data-$k"
  fi
  want=$(( $(info "$data" episodes) + ITER_EPISODES )); have=$(info "$OUT/data-$k" episodes)
  if [ "$have" -lt "$want" ]; then
    log "4.$k. round $k: $player plays $((want - have)) episodes in the engine (epsilon $EPSILON)"
    $NW record --env doom/take_cover --agent "$player" --epsilon "$EPSILON" --episodes $((want - have)) --resolution "$RES" \
        --workers 2 --seed $((50000 * k + have)) --out "$OUT/data-$k" --quiet
  fi
  if [ ! -f "$OUT/world-$k/summary.json" ]; then
    resume=""; [ -f "$OUT/world-$k/run.json" ] && resume="--resume"
    log "4.$k. round $k: the world trained on all of it (the VAE kept, $RNN_STEPS MDN-LSTM steps) $resume"
    $NW train "$OUT/data-$k" --model rnn --preset "$PRESET" --init-autoencoder "$OUT/world" --vae-steps 0 --rnn-steps "$RNN_STEPS" \
        --out "$OUT/world-$k" --validate-every 1000 --checkpoint-every 250 --quiet $resume
  fi
  if [ ! -f "$OUT/heads-$k/metrics.json" ]; then
    $NW eval "$OUT/world-$k" --data "$OUT/data-$k" --report "$OUT/heads-$k" --skip fidelity,control,stability,memory,speed,probes
  fi
  log "4.$k. round $k: CMA-ES in the new world's dream"
  agent "agent-dream-$k" "$OUT/world-$k/world" "$GENERATIONS" "" --temperature "$TEMPERATURE"
  data="$OUT/data-$k"; player="$OUT/agent-dream-$k"; rows="$rows agent-dream-$k"
done
frames=$(info "$data" frames)
log "5. CMA-ES in the real engine, ${REAL_STEPS:-$frames} steps (the dreams' worlds were recorded from $frames)"
agent agent-real doom/take_cover 1000000 "${REAL_STEPS:-$frames}" --world "$OUT/world/world" --resolution "$RES"

log "6. scoring in real ViZDoom, $EVAL_EPISODES episodes each"
for who in $rows agent-real; do
  if ! grep -q "\"row\": \"$who\"" "$OUT/results.jsonl" 2>/dev/null; then
    agent_path="$OUT/$who"; [ "$who" = random ] && agent_path=random
    line=$($NW agent eval "$agent_path" --env doom/take_cover --episodes "$EVAL_EPISODES" --seed 1 --resolution "$RES" \
        --actions "$ACTIONS" --all)
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
