#!/usr/bin/env bash
# One lent-GPU session of the generators' training (the right-size issue), sized for one ~10-minute device call:
#   1. both bundles train side by side on the one GPU for MINUTES (--max_minutes: each stops at the last epoch end
#      that fits), each on a fresh phantom training set of N images drawn with phantom seed 100 + SESSION (a new
#      draw every session, so the model cannot memorise its images), warm-started from START/<kind>/model.pt when
#      that file was carried in (the last session's result), else from the bundle's shipped weights;
#   2. the held-out checks of the new and the starting weights, side by side on the same images: reconstruction
#      (DDIM inversion + decoding, the session's test split), the attribute effect maps against the phantom's,
#      the mammogram skin marker, and the evaluate bundle unguided ({mode: none}) on the evaluate job's held-out
#      phantom set (seed 1000; 3 seeds x 8 images, 20 steps): target_ratio, truth_error per intervention;
#   3. OUT/<kind>/ gets model.pt and graph.json (11 MB: carry them back in as START for the next session),
#      the checks as JSON / CSV and the MLflow metrics of the training (loss, val_loss per step) as CSV.
#   WORK=/tmp/train OUT=/tmp/out START=runs/gpu_start SESSION=1 MINUTES=6 bash benchmarks/gpu_training.sh
# MINUTES covers the epochs only: making the phantom sets (before) and the export and checks (after) come on top, so
# leave a few minutes of the call for them; the first validation and sample grid are inside the budget because
# --val_interval 1 makes every epoch validate (the longest epoch so far decides when to stop).
# A CPU session (no GPU lent; one torch thread per bundle): DEVICE=cpu OMP_NUM_THREADS=1 N=6000 BATCH=8 LR=0.0001
#   (KINDS=mammo trains one generator only and leaves the other core free)
# Smoke settings on a CPU: DEVICE=cpu MINUTES=0.2 N=60 HELDOUT=8 IMAGES=2 SEEDS="[0]" STEPS=2 COUNT=4 EFFECT_SEEDS=1 \
#   CHECK_STEPS=2 SUBJECTS=4
# The GPU image needs the wheels of benchmarks/gpu_env.sh in .whl (carried in beside START).
set -u
WORK=${WORK:-/tmp/train}; OUT=${OUT:-/tmp/out}; START=${START:-runs/gpu_start}; SESSION=${SESSION:-1}
MINUTES=${MINUTES:-6}; N=${N:-20000}; BATCH=${BATCH:-64}; DEVICE=${DEVICE:-cuda}; LR=${LR:-}  # LR empty: train.yaml's
HELDOUT=${HELDOUT:-48}; IMAGES=${IMAGES:-8}; SEEDS=${SEEDS:-"[0, 1, 2]"}; STEPS=${STEPS:-20}; COUNT=${COUNT:-64}
EFFECT_SEEDS=${EFFECT_SEEDS:-16}; CHECK_STEPS=${CHECK_STEPS:-25}; SUBJECTS=${SUBJECTS:-48}
KINDS=${KINDS:-"cxr mammo"}  # the generators this session trains: both by default, or one ("mammo")
cd "$(dirname "$0")/.."   # the repository root: bundles/, .whl and START are read from there
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WORK=$(absolute "$WORK"); OUT=$(absolute "$OUT"); START=$(absolute "$START")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs" "$OUT"
started=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"   # wheels into WORK/site, the SciPy shim
event() { echo "$1 after $(( $(date +%s) - started )) s" | tee -a "$WORK/logs/events.log"; }
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
declare -A BUNDLE=([cxr]=cxr_counterfactual [mammo]=mammo_counterfactual)
declare -A EVAL_INTERVENTIONS=(
  [cxr]="['do(sex=F)', 'do(race=Black)', 'do(age=+20)', 'do(disease=Pleural Effusion)']"
  [mammo]="['do(density=D)', 'do(density=A)', 'do(age=+15)', 'do(marker=circle)']"
)

starting_model() {  # the weights this session starts from: carried in, else the bundle's shipped ones
  if [ -f "$START/$1/model.pt" ]; then echo "$START/$1"; else echo "$PWD/bundles/${BUNDLE[$1]}/models"; fi
}

train() {  # train KIND: one bundle's training, its own MLflow store
  local kind=$1 from; from=$(starting_model "$1")
  mkdir -p "$WORK/$kind"
  ( cd "$WORK/$kind" && MLFLOW_TRACKING_URI="sqlite:///$WORK/$kind/mlflow.db" python3 -m monai.bundle run \
      --config_file "$OLDPWD/bundles/${BUNDLE[$kind]}/configs/train.yaml" --output_dir "$WORK/$kind/run" \
      --phantom_dir "$WORK/$kind/phantom" --phantom_n "$N" --phantom_seed $(( 100 + SESSION )) \
      --init_weights "$from/model.pt" --max_minutes "$MINUTES" --max_epochs 1000 --batch_size "$BATCH" ${LR:+--learning_rate "$LR"} \
      --val_interval 1 --log_every 20 ) > "$WORK/logs/train_$kind.log" 2>&1
  event "train $kind finished with $? (from $from)"
}

check() {  # check KIND NAME FOLDER: the held-out checks of the weights in FOLDER, written to OUT/KIND/checks_NAME*
  local kind=$1 name=$2 folder=$3 manifest="$WORK/$1/phantom/prepared/manifest.csv" into="$OUT/$1"
  python3 -m medcf.measure.reconstruction --model "$folder/model.pt" --manifest "$manifest" --split test \
    --count "$COUNT" --steps "$CHECK_STEPS" --device "$DEVICE" > "$into/reconstruction_$name.json" 2>> "$WORK/logs/check_$kind.log"
  python3 -m medcf.measure.attribute_effects --model "$folder/model.pt" --phantom "$kind" --seeds "$EFFECT_SEEDS" \
    --steps "$CHECK_STEPS" --subjects "$SUBJECTS" --device "$DEVICE" > "$into/attribute_effects_$name.json" 2>> "$WORK/logs/check_$kind.log"
  [ "$kind" = mammo ] && python3 -m medcf.measure.marker_presence --model "$folder/model.pt" --device "$DEVICE" \
    --subjects "$SUBJECTS" --steps "$CHECK_STEPS" \
    > "$into/marker_presence_$name.json" 2>> "$WORK/logs/check_$kind.log"
  ( cd "$WORK/$kind" && MLFLOW_TRACKING_URI="sqlite:///$WORK/$kind/evaluate_$name.db" python3 -m monai.bundle run \
      --config_file "$OLDPWD/bundles/${BUNDLE[$kind]}/configs/evaluate.yaml" --output_dir "$WORK/$kind/evaluate_$name" \
      --model_path "$folder/model.pt" --graph_path "$folder/graph.json" --heldout_subjects "$HELDOUT" \
      --seeds "$SEEDS" --images_per_seed "$IMAGES" --steps "$STEPS" --composition_images 0 --reversibility false \
      --interventions "${EVAL_INTERVENTIONS[$kind]}" --guidance_settings "[{'mode': 'none'}]" --device "$DEVICE" ) \
    >> "$WORK/logs/check_$kind.log" 2>&1
  cp "$WORK/$kind/evaluate_$name/metrics.csv" "$into/unguided_$name.csv" 2>/dev/null
  event "checks $kind $name finished"
}

for kind in $KINDS; do train "$kind" & done; wait
for kind in $KINDS; do  # the new and the starting weights' checks side by side, each in its own process
  mkdir -p "$OUT/$kind"
  cp "$WORK/$kind/run/model.pt" "$WORK/$kind/run/graph.json" "$OUT/$kind/" 2>/dev/null
  check "$kind" new "$WORK/$kind/run" & check "$kind" start "$(starting_model "$kind")" &
done; wait
for kind in $KINDS; do  # the training curve: every logged metric of the MLflow run, one row per step
  MLFLOW_TRACKING_URI="sqlite:///$WORK/$kind/mlflow.db" python3 - "$kind" "$OUT/$kind/training_curve.csv" <<'EOF'
import sys

import mlflow
import pandas as pd

client = mlflow.MlflowClient()
experiment = client.get_experiment_by_name(f"medcf-{sys.argv[1]}")
rows = []
for run in client.search_runs([experiment.experiment_id]) if experiment else []:
    for key in ("train_loss", "val_loss"):
        rows += [{"metric": key, "step": m.step, "value": m.value} for m in client.get_metric_history(run.info.run_id, key)]
pd.DataFrame(rows, columns=["metric", "step", "value"]).to_csv(sys.argv[2], index=False)
EOF
done
event "done"
cp "$WORK"/logs/*.log "$OUT/" 2>/dev/null
ls -la "$OUT"/*
