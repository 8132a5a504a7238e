#!/usr/bin/env bash
# The 2-core CPU recipe end to end: collect expert demos -> train -> export -> evaluate (what `make model` runs):
# 90 minutes for collection + training + export (BUDGET_MIN), bf16 autocast where the CPU has it, and the
# auxiliary goal loss (GOAL_WEIGHT), without which no CPU run ever learned to read the colour word (model card).
# The shipped models/gato_arm_small is this recipe's product (`NAME=gato_arm_small`; its README); the bundle shipped
# before it came from a GPU stage plus a CPU fine-tune (scripts/train_gpu.sh).
#
#   scripts/make_model.sh        # variables below override, e.g. BUDGET_MIN=0 STEPS=2000 GOAL_WEIGHT=0
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
REACH_EPISODES=${REACH_EPISODES:-3000}
PICK_EPISODES=${PICK_EPISODES:-2000}
STEPS=${STEPS:-50000}  # a cap: BUDGET_MIN ends the run first
LABEL_SIGMA=${LABEL_SIGMA:-4}
# All cores: the recipe expects the machine to itself (2-core development box, batch 64 in bf16: ~0.75 s per step
# with 2 threads; tests running beside it cost it a third). THREADS=0: the trainer's default.
THREADS=${THREADS:-$(nproc)}
CONFIG=${CONFIG:-gato-arm-film-coord}
NOISE=${NOISE:-0.01}
BATCH=${BATCH:-64}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-300}
START_PROB=${START_PROB:-0.5}
TURN_PROB=${TURN_PROB:-0.2}
DECISION_WEIGHT=${DECISION_WEIGHT:-1}
# > 0: the auxiliary goal-position loss (`train --goal-weight`)
GOAL_WEIGHT=${GOAL_WEIGHT:-1}
# auto: bf16 autocast where the CPU multiplies bf16 natively (this development machine: 1.5x the fp32 rate)
PRECISION=${PRECISION:-auto}
# BUDGET_MIN > 0: collection + training + export end within this many minutes (training gets what collection
# left, `train --minutes`; STEPS still caps it); 0: train exactly STEPS steps.
BUDGET_MIN=${BUDGET_MIN:-90}
EVAL=${EVAL:-1}
EVAL_EPISODES=${EVAL_EPISODES:-100}
EVAL_SEED=${EVAL_SEED:-1000000}
export MUJOCO_GL=${MUJOCO_GL:-egl}

t0=$(date +%s)
# Both tasks at once, one process each (the sim renders on the CPU: two cores, two collectors); each into its own
# directory, renamed when complete, so a half-collected dataset is never mistaken for a finished one.
collect() {  # TASK EPISODES FIRST_SEED
  [ -f "$DATA/$1/dataset.json" ] && return 0
  rm -rf "$DATA/$1.tmp" && mkdir -p "$DATA"
  "$BIN/gato-ros" collect --task "$1" --episodes "$2" --seed "$3" --noise "$NOISE" --out "$DATA/$1.tmp" \
    --no-progress && mv "$DATA/$1.tmp" "$DATA/$1"
}
collect reach "$REACH_EPISODES" 0 & r=$!
collect pick_place "$PICK_EPISODES" 100000 & p=$!
wait $r && wait $p
"$BIN/gato-ros" dataset info "$DATA/reach" && "$BIN/gato-ros" dataset info "$DATA/pick_place"
t1=$(date +%s)
budget=()
if [ "$BUDGET_MIN" != 0 ]; then  # what is left of the end-to-end budget, less 2 min for export and saving
  budget=(--minutes "$(awk -v m="$BUDGET_MIN" -v s=$((t1 - t0)) 'BEGIN { printf "%.2f", m - s / 60 - 2 }')")
fi
"$BIN/gato-ros" train --data "$DATA/reach" --data "$DATA/pick_place" --out "$RUN" --config "$CONFIG" \
  --steps "$STEPS" "${budget[@]}" --batch-size "$BATCH" --lr "$LR" --warmup "$WARMUP" --label-sigma "$LABEL_SIGMA" \
  --start-prob "$START_PROB" --turn-prob "$TURN_PROB" --decision-weight "$DECISION_WEIGHT" \
  --goal-weight "$GOAL_WEIGHT" --precision "$PRECISION" --threads "$THREADS" --ckpt-every 250 --val-every 250 \
  --no-progress --resume
t2=$(date +%s)
rm -rf "$OUT.tmp" && "$BIN/gato-ros" export --checkpoint "$RUN" --out "$OUT.tmp" --name "$NAME"
if [ -d "$OUT" ]; then  # the bundle this run replaces (e.g. the shipped one) is kept, not lost
  rm -rf "$RUN/previous_bundle" && mv "$OUT" "$RUN/previous_bundle" && echo "previous $OUT kept in $RUN/previous_bundle"
fi
mv "$OUT.tmp" "$OUT"
t3=$(date +%s)
[ "$EVAL" = 1 ] && EVAL_EPISODES="$EVAL_EPISODES" EVAL_SEED="$EVAL_SEED" BIN="$BIN" scripts/eval_model.sh "$OUT" "$RUN"
t4=$(date +%s)
echo "{\"collect_s\": $((t1-t0)), \"train_s\": $((t2-t1)), \"export_s\": $((t3-t2)), \"eval_s\": $((t4-t3))}" \
  | tee "$RUN/timing.json"
