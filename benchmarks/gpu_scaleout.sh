#!/usr/bin/env bash
# What a lent GPU runs for issue 14's scale-out work, in one go (one card: torchrun runs one NCCL process):
#   1. the CUDA tests;
#   2. the chest inference bundle ALONE on the card, end to end (reading, preparing, abduction, DCFG decoding,
#      DICOM/PNG writing, MLflow), on a phantom export of N subjects: --workers 0 against --workers 4 (DataLoader
#      workers preparing the DICOM files), batch 64, fp32; seconds and counterfactuals per second of each;
#   3. one-process NCCL torchrun runs of multi_gpu_train.yaml (per-rank cached shard, a few epochs on a small
#      phantom set), multi_gpu_evaluate.yaml and multi_gpu_audit.yaml.
#   WORK=/tmp/gpu OUT=/tmp/out N=512 bash benchmarks/gpu_scaleout.sh
# A dry run on a CPU: DEVICE=cpu N=4 STEPS=2 TRAIN_N=24 AUDIT_N=4 bash benchmarks/gpu_scaleout.sh
# Wheels the GPU image lacks travel in .whl and go into WORK/site first (benchmarks/gpu_env.sh). Run on an H100 on
# 2026-11-26: 403 s with N=512 (each inference run 124 s wall, 107 s of it the job itself, before the preview
# grids were capped at 8 rows).
set -u
WORK=${WORK:-/tmp/gpu}; OUT=${OUT:-/tmp/out}; N=${N:-512}; STEPS=${STEPS:-50}; TRAIN_N=${TRAIN_N:-256}
DEVICE=${DEVICE:-cuda}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs" "$OUT"
started=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"   # wheels into WORK/site, the SciPy shim
event() { echo "$1 after $(( $(date +%s) - started )) s" | tee -a "$WORK/logs/events.log"; }
run_in() {  # run_in NAME command...: in WORK/NAME with its own MLflow store, timed
  local name=$1; shift
  mkdir -p "$WORK/$name"
  ( cd "$WORK/$name" && MLFLOW_TRACKING_URI="sqlite:///$WORK/$name/mlflow.db" /usr/bin/time -f "%e s wall" "$@" ) \
    > "$WORK/logs/$name.log" 2>&1
  event "$name finished with $?"
}
cxr=$PWD/bundles/cxr_counterfactual/configs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/logs/gpu.txt" 2>&1

if [ "$DEVICE" != cpu ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/evaluation/test_evaluate.py -k "cuda or bf16" \
    > "$WORK/logs/pytest.log" 2>&1; event "cuda tests finished with $?"
fi

python3 -c "from medcf.jobs.phantom_sets import phantom_export_with_cohort as e; e('cxr', '$WORK/data', $N, 128, 1000)" \
  > "$WORK/logs/data.log" 2>&1; event "phantom export of $N subjects finished with $?"
for workers in 0 4; do
  run_in "infer_workers$workers" python3 -m monai.bundle run --config_file "$cxr/inference.yaml" --device $DEVICE \
    --dataset_dir "$WORK/data/export" --labels "$WORK/data/cohort.csv" --batch_size 64 --workers $workers --steps $STEPS --output_dir out
done
torchrun1=(python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m monai.bundle run)
run_in train_nccl "${torchrun1[@]}" --config_file "['$cxr/train.yaml','$cxr/multi_gpu_train.yaml']" --phantom_n $TRAIN_N \
  --max_epochs 3 --val_interval 3 --output_dir runs
run_in evaluate_nccl "${torchrun1[@]}" --config_file "['$cxr/evaluate.yaml','$cxr/multi_gpu_evaluate.yaml']" --output_dir out \
  --device $DEVICE --steps $STEPS --heldout_subjects 24
run_in audit_nccl "${torchrun1[@]}" --config_file "['$cxr/audit.yaml','$cxr/multi_gpu_audit.yaml']" --output_dir out \
  --heldout_subjects ${AUDIT_N:-50} --batch_size 64 --device $DEVICE --steps $STEPS
python3 - "$WORK" > "$OUT/summary.txt" 2>&1 <<'PY'
import sys, glob, mlflow
for db in sorted(glob.glob(f"{sys.argv[1]}/*/mlflow.db")):
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(search_all_experiments=True)
    for _, run in runs.iterrows():
        metrics = {k[8:]: v for k, v in run.items() if k.startswith("metrics.") and v == v}
        keep = {k: round(v, 4) for k, v in metrics.items() if k in (
            "counterfactuals", "seconds_per_counterfactual", "seconds", "counterfactuals_per_second", "train_loss",
            "val_loss", "epoch") or k.startswith(("effectiveness", "truth_error"))}
        print(db.split("/")[-2], run["status"], run.get("tags.mlflow.runName"), keep)
PY
cd "$WORK" && tar czf "$OUT/results.tgz" --exclude='*/data' --exclude='*/heldout_data' --exclude='*.dcm' \
  --exclude='*.db' --exclude='*/grids' --exclude='*.png' --exclude='site' --exclude='phantom_train_cxr' . 2>/dev/null
cat logs/events.log; for f in logs/*.log; do echo "== $f"; tail -n 4 "$f"; done; cat "$OUT/summary.txt"
