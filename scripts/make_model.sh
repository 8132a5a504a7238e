#!/usr/bin/env bash
# Train the shipped model end to end: collect expert demos -> train -> export -> evaluate (what `make model` runs).
#
#   scripts/make_model.sh        # the recipe of models/gato_arm_small (see its README); variables below override
#
# Every seed is fixed: demos use env seeds from 0 (reach) and from 100000 (pick_place);
# evaluation uses seeds from 1000000, never seen in training. Budget on a 2-core CPU: see the model card.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
NAME=${NAME:-gato_arm_small}
DATA=${DATA:-data/$NAME}
RUN=${RUN:-runs/$NAME}
OUT=${OUT:-models/$NAME}
REACH_EPISODES=${REACH_EPISODES:-1200}
PICK_EPISODES=${PICK_EPISODES:-1000}
STEPS=${STEPS:-7000}
LABEL_SIGMA=${LABEL_SIGMA:-4}
# All cores: the recipe expects the machine to itself (idle 2-core box: 0.23 s/step with 2 threads, 0.39 with 1;
# the shipped bundle was trained with 1 thread on a shared machine). THREADS=0: the trainer's default.
THREADS=${THREADS:-$(nproc)}
CONFIG=${CONFIG:-gato-arm}
NOISE=${NOISE:-0.01}
BATCH=${BATCH:-16}
EVAL_EPISODES=${EVAL_EPISODES:-100}
EVAL_SEED=${EVAL_SEED:-1000000}
export MUJOCO_GL=${MUJOCO_GL:-egl}

t0=$(date +%s)
if [ ! -f "$DATA/dataset.json" ]; then
  "$BIN/gato-ros" collect --task reach --episodes "$REACH_EPISODES" --seed 0 --noise "$NOISE" --out "$DATA.tmp"
  "$BIN/gato-ros" collect --task pick_place --episodes "$PICK_EPISODES" --seed 100000 --noise "$NOISE" \
    --out "$DATA.tmp"
  mv "$DATA.tmp" "$DATA"  # a half-collected dataset is never mistaken for a finished one
fi
"$BIN/gato-ros" dataset info "$DATA"
t1=$(date +%s)
"$BIN/gato-ros" train --data "$DATA" --out "$RUN" --config "$CONFIG" --steps "$STEPS" --batch-size "$BATCH" \
  --label-sigma "$LABEL_SIGMA" --start-prob "${START_PROB:-0}" --threads "$THREADS" --ckpt-every 250 --val-every 250 \
  --resume
t2=$(date +%s)
rm -rf "$OUT.tmp" && "$BIN/gato-ros" export --checkpoint "$RUN" --out "$OUT.tmp" --name "$NAME"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
t3=$(date +%s)
EVAL_EPISODES="$EVAL_EPISODES" EVAL_SEED="$EVAL_SEED" BIN="$BIN" scripts/eval_model.sh "$OUT" "$RUN"
t4=$(date +%s)
echo "{\"collect_s\": $((t1-t0)), \"train_s\": $((t2-t1)), \"export_s\": $((t3-t2)), \"eval_s\": $((t4-t3))}" \
  | tee "$RUN/timing.json"
