#!/usr/bin/env bash
# What a lent GPU runs for the device work (issue 14) and the audit's full worked example (issue 13), in one go:
#   1. the CUDA tests (tests/test_devices.py, the CUDA evaluate test);
#   2. benchmarks/device_throughput.py alone on the card (matmul peak, UNet rows/s and counterfactuals/s for
#      batches 1-256 in fp32 and bf16, bf16 quality on 16 held-out phantom images);
#   3. side by side: the no-argument inference bundles with --device cuda in fp32 and bf16, a one-process
#      torchrun (NCCL) sharded inference, the evaluate bundle comparing fp32 and bf16 (truth_error), and the
#      chest audit of both shipped classifiers with every default intervention on 50 held-out subjects, plus
#      the mammogram audit on 50.
#   WORK=/tmp/gpu OUT=/tmp/out DEADLINE=400 bash benchmarks/gpu_session.sh
# The GPU image lacked MONAI, pydicom, MLflow and ignite: give their wheels in .whl (see
# docs/guidance_study/run_on_gpu.sh for the list) and they are installed into WORK/site first; the phantoms
# also need pyjpegls and pylibjpeg-openjpeg (they write JPEG-LS and JPEG 2000 files). Run on an H200 on
# 2026-11-26 (about 4 minutes: CUDA tests 7 s, throughput 83 s, the rest side by side in 150 s).
set -u
WORK=${WORK:-/tmp/gpu}; OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-400}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs" "$OUT"
started=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"   # wheels into WORK/site, the SciPy shim
event() { echo "$1 after $(( $(date +%s) - started )) s" | tee -a "$WORK/logs/events.log"; }
bundle() {  # bundle NAME CONFIG [arguments]: python -m monai.bundle run in WORK/NAME with its own MLflow store
  local name=$1 config=$2; shift 2
  mkdir -p "$WORK/$name"
  ( cd "$WORK/$name" && MLFLOW_TRACKING_URI="sqlite:///$WORK/$name/mlflow.db" /usr/bin/time -f "%e s wall" \
      python3 -m monai.bundle run --config_file "$config" "$@" ) > "$WORK/logs/$name.log" 2>&1
  event "$name finished with $?"
}
cxr=$PWD/bundles/cxr_counterfactual/configs; mammo=$PWD/bundles/mammo_counterfactual/configs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/logs/gpu.txt" 2>&1

[ -n "${SKIP_TESTS:-}" ] || python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/evaluation/test_evaluate.py -k "cuda or bf16" \
  > "$WORK/logs/pytest.log" 2>&1; event "cuda tests finished with $?"
python3 benchmarks/device_throughput.py --device cuda --images 16 --out "$OUT/gpu_throughput.json" \
  > "$WORK/logs/throughput.log" 2>&1; event "throughput finished with $?"

bundle infer_cxr_fp32 "$cxr/inference.yaml" --device cuda --output_dir out &
bundle infer_cxr_bf16 "$cxr/inference.yaml" --device cuda --precision bf16 --output_dir out &
bundle infer_mammo_fp32 "$mammo/inference.yaml" --device cuda --output_dir out &
( mkdir -p "$WORK/torchrun" && cd "$WORK/torchrun" && MLFLOW_TRACKING_URI="sqlite:///$WORK/torchrun/mlflow.db" \
    python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m monai.bundle run --config_file \
    "['$cxr/inference.yaml','$cxr/multi_gpu_inference.yaml']" --output_dir out > "$WORK/logs/torchrun.log" 2>&1;
  event "torchrun finished with $?" ) &
bundle evaluate_precision "$cxr/evaluate.yaml" --output_dir out --heldout_subjects 48 --steps 50 \
  --seeds "[0, 1, 2]" --images_per_seed 8 \
  --guidance_settings "[{'mode': 'dcfg', 'w_aff': 2.0, 'w_inv': 1.0}, {'mode': 'dcfg', 'w_aff': 2.0, 'w_inv': 1.0, 'precision': 'bf16'}]" &
bundle audit_shortcut "$cxr/audit.yaml" --output_dir out --heldout_subjects 50 --batch_size 64 &
bundle audit_fair "$cxr/audit.yaml" --output_dir out --heldout_subjects 50 --batch_size 64 \
  --classifier "$PWD/bundles/cxr_counterfactual/models/classifiers/effusion_fair.ts" &
bundle audit_mammo "$mammo/audit.yaml" --output_dir out --heldout_subjects 50 --batch_size 64 &
while [ -n "$(jobs -r)" ] && [ $(( $(date +%s) - started )) -lt "$DEADLINE" ]; do sleep 3; done
event "stopping; still running: $(jobs -r | wc -l)"
for job in $(jobs -p); do pkill -TERM -P "$job" 2>/dev/null; kill "$job" 2>/dev/null; done; sleep 2
cd "$WORK" && tar czf "$OUT/results.tgz" --exclude='*/heldout_data' --exclude='*.dcm' --exclude='*.db' --exclude='*/grids' \
  --exclude='*.png' --exclude='site' --exclude='shim' . 2>/dev/null
cat logs/events.log; for f in logs/*.log; do echo "== $f"; tail -n 4 "$f"; done; ls -la "$OUT"
