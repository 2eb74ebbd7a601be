#!/usr/bin/env bash
# The guidance study (issue 12) as it was run on one lent GPU: both bundles' full studies with the shipped
# weights, and (item 5) three chest fine-tunes from the demo weights that differ only in condition dropout,
# each followed by its own study. Everything runs side by side; at DEADLINE seconds whatever is unfinished
# is stopped (every study stage that finished is kept: `python -m medcf.jobs.study` resumes) and the
# results are packed into OUT.
#   WORK=/tmp/study OUT=/tmp/out DEADLINE=520 bash docs/guidance_study/run_on_gpu.sh
# Smaller smoke settings: SEEDS="0" IMAGES=2 STEPS=2 WEIGHTS="1 3" HELDOUT=6 FT_EPOCHS=1 FT_N=40
# Measured on one H200 (2026-11-26, 16 CPU cores, OMP_NUM_THREADS=2 per process, everything side by side): the
# three 20-epoch fine-tunes about 130 s each; the five studies 157-199 s; alone, the two shipped-weight
# studies 114 s (mammogram) and 148 s (chest).
# The GPU image had Python 3.12 with torch, numpy, scipy, pandas and matplotlib but not MONAI, pydicom, MLflow,
# pytorch-ignite or the JPEG plugins; they travelled as wheels (about 31 MB) downloaded here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     monai==1.6.1 pydicom==3.0.2 pytorch-ignite==0.5.5 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 ...
# (the rest: alembic sqlalchemy mako pydantic pydantic-core annotated-types typing-inspection opentelemetry-api
# opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions cachetools importlib-metadata
# python-dotenv sqlparse databricks-sdk gitpython gitdb smmap fastapi starlette cryptography cffi pycparser fire
# termcolor pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls) and installed there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -u
WORK=${WORK:-/tmp/study}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-520}; DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-"0 1 2"}; IMAGES=${IMAGES:-8}; STEPS=${STEPS:-20}; WEIGHTS=${WEIGHTS:-"1 1.5 2 3 5"}
HELDOUT=${HELDOUT:-48}; FT_EPOCHS=${FT_EPOCHS:-60}; FT_N=${FT_N:-4000}; FT_WEIGHTS=${FT_WEIGHTS:-"1 2 3 5"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs" "$OUT"
started=$(date +%s)
# MONAI 1.6.1's FIDMetric calls scipy.linalg.sqrtm(disp=False), which SciPy 1.18 rejects; medcf pins scipy<1.18.
# On a machine whose SciPy is newer (the GPU image had 1.18.1) a sitecustomize shim restores the old call for
# this run only.
if python3 -c "import inspect, sys, scipy.linalg as l; sys.exit('disp' in inspect.signature(l.sqrtm).parameters)"; then
  mkdir -p "$WORK/shim"
  printf 'import scipy.linalg as _l\n_s = _l.sqrtm\ndef _sqrtm(a, disp=True, **k):\n    r = _s(a, **k)\n    return r if disp else (r, 0.0)\n_l.sqrtm = _sqrtm\n' \
    > "$WORK/shim/sitecustomize.py"
  export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
fi
study() {  # study NAME BUNDLE WEIGHTS [more arguments]
  local name=$1 bundle=$2 weights=$3; shift 3
  MLFLOW_TRACKING_URI="sqlite:///$WORK/$name.db" python3 -m medcf.jobs.study --bundle "$bundle" \
    --output_dir "$WORK/$name" --seeds $SEEDS --images_per_seed "$IMAGES" --steps "$STEPS" --weights $weights \
    --heldout_subjects "$HELDOUT" --device "$DEVICE" "$@" > "$WORK/logs/$name.log" 2>&1
  echo "$name finished with $? after $(( $(date +%s) - started )) s" >> "$WORK/logs/events.log"
}
finetune() {  # finetune POLICY [dropout overrides]: train from the demo weights, then study the result
  local policy=$1; shift
  MLFLOW_TRACKING_URI="sqlite:///$WORK/ft_$policy.db" python3 -m monai.bundle run \
    --config_file bundles/cxr_counterfactual/configs/train.yaml --output_dir "$WORK/ft_$policy" \
    --init_weights bundles/cxr_counterfactual/models/model.pt --phantom_dir "$WORK/phantom_train_cxr" \
    --phantom_n "$FT_N" --max_epochs "$FT_EPOCHS" --batch_size 32 --learning_rate 0.0001 --val_interval 10 \
    --log_every 50 "$@" > "$WORK/logs/ft_$policy.log" 2>&1
  echo "ft_$policy trained with $? after $(( $(date +%s) - started )) s" >> "$WORK/logs/events.log"
  study "study_cxr_ft_$policy" cxr_counterfactual "$FT_WEIGHTS" --model_path "$WORK/ft_$policy/model.pt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/logs/gpu.txt" 2>&1
study study_cxr cxr_counterfactual "$WEIGHTS" &
study study_mammo mammo_counterfactual "$WEIGHTS" &
python3 -c "from medcf.jobs.phantom_sets import phantom_training_set as p; p('cxr', '$WORK/phantom_train_cxr', $FT_N, 64, 0)" \
  > "$WORK/logs/phantom_train_cxr.log" 2>&1
echo "phantom training set after $(( $(date +%s) - started )) s" >> "$WORK/logs/events.log"
finetune whole --dropout#whole 0.1 --dropout#per_attribute 0.0 &
finetune per_attribute --dropout#whole 0.1 --dropout#per_attribute 0.1 &
finetune per_group --dropout#whole 0.1 --dropout#per_attribute 0.0 --dropout#per_group 0.1 \
  --dropout#groups "[['age','disease'],['sex'],['race']]" &
while [ -n "$(jobs -r)" ] && [ $(( $(date +%s) - started )) -lt "$DEADLINE" ]; do sleep 5; done
echo "stopping at $(( $(date +%s) - started )) s; still running: $(jobs -r | wc -l)" >> "$WORK/logs/events.log"
for job in $(jobs -p); do pkill -TERM -P "$job" 2>/dev/null; kill "$job" 2>/dev/null; done; sleep 2
cd "$WORK" && tar czf "$OUT/studies.tgz" --exclude='*/heldout_data' --exclude='*/grid/*/plots' \
  --exclude='*/selected/*/plots' --exclude='*/selection/plots' study_* logs
for policy in whole per_attribute per_group; do  # one file each: what comes back is at most 16 MiB a file
  [ -f "ft_$policy/model.pt" ] && tar czf "$OUT/ft_$policy.tgz" "ft_$policy/model.pt" "ft_$policy/graph.json"
done
tar czf "$OUT/mlflow.tgz" ./*.db 2>/dev/null
cat logs/events.log; for f in logs/*.log; do echo "== $f"; tail -n 2 "$f"; done; ls -la "$OUT"
