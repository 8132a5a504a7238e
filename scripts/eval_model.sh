#!/usr/bin/env bash
# Evaluate a bundle the way its model card reports it (what `make model` and `make model-gpu` run after training):
# the bundle, the scripted expert and a random policy on the same held-out seeds, the bundle with a Gato prompt, and
# the bundle through the ROS 2 node graph. Results: RUN/eval/*.json (`python -m gato_ros.report RUN BUNDLE` reads them).
#
#   scripts/eval_model.sh models/gato_arm_small runs/gato_arm_small    # ROS_EVAL=0 skips the --ros row
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/eval_model.sh BUNDLE RUN}
RUN=${2:?usage: scripts/eval_model.sh BUNDLE RUN}
BIN=${BIN:-.venv/bin}
EVAL_EPISODES=${EVAL_EPISODES:-100}
EVAL_SEED=${EVAL_SEED:-1000000}
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$RUN/eval"
for policy in "$OUT" expert random; do
  tag=$(basename "$policy")
  "$BIN/gato-ros" eval --policy "$policy" --episodes "$EVAL_EPISODES" --seed "$EVAL_SEED" --json \
    --out "$RUN/eval/$tag.json" --no-progress > /dev/null
  echo "eval $tag: $(cat "$RUN/eval/$tag.json")"
done
# Gato few-shot prompting (a successful expert demonstration of the same task, fresh layouts) and the same episodes
# through the ROS 2 node graph (sim node + policy node over DDS on loopback; the policy ticks in lockstep).
"$BIN/gato-ros" eval --policy "$OUT" --episodes "$EVAL_EPISODES" --seed "$EVAL_SEED" --prompt expert --json \
  --out "$RUN/eval/prompted.json" --no-progress > /dev/null
echo "eval prompted: $(cat "$RUN/eval/prompted.json")"
if [ "${ROS_EVAL:-1}" = 1 ]; then
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))} \
    "$BIN/gato-ros" eval --policy "$OUT" --episodes "$EVAL_EPISODES" --seed "$EVAL_SEED" --ros --json \
    --out "$RUN/eval/ros.json" --no-progress > /dev/null
  echo "eval ros: $(cat "$RUN/eval/ros.json")"
fi
