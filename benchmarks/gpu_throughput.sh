#!/usr/bin/env bash
# The throughput issue's measurements on a lent GPU, sized for one ~10-minute device call, every row appended to
# benchmarks/results/throughput.csv (copy it back from $OUT):
#   1. the engine alone at 64 px: batches 1-512, fp32 / bf16, DCFG / CFG / DCFG with the guidance interval / the
#      calibrated plan (the bundle default), DCFG and the plan also under rule nested (two rows per step at w_inv 1),
#      without torch.compile; then compiled at
#      batch 256; then 128 and 192 px at batches 64 and 256;
#   2. the chest inference bundle end to end (DICOM files to written DICOMs and manifest) on a phantom export of
#      512 subjects, batches 64 and 256, the calibrated plan, CFG, DCFG and DCFG with the interval, fp32 (the plan
#      and DCFG also nested);
#   3. training images/s at 64, 128 and 192 px, batches 32 and 128, fp32 / bf16.
#   WORK=/tmp/gpu OUT=/tmp/out bash benchmarks/gpu_throughput.sh
# Not yet run on a GPU (written on the CPU machine, 2026-12-06; the CPU rows come from the same script).
set -u
WORK=${WORK:-/tmp/gpu}; OUT=${OUT:-/tmp/out}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs" "$OUT"
source "$(dirname "$0")/gpu_env.sh"   # wheels into WORK/site, the SciPy shim
csv=$OUT/throughput.csv
run() { python3 benchmarks/throughput.py --device cuda --out "$csv" "$@" 2>&1 | tee -a "$WORK/logs/throughput.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
run --stages engine --sizes 64 --batches 1 8 64 256 512 --compile no --repeats 3 --guidance dcfg dcfg_nested cfg dcfg_interval calibrated calibrated_nested
run --stages engine --sizes 64 --batches 256 --compile yes --repeats 3
run --stages engine --sizes 128 192 --batches 64 256 --compile no --precisions bf16 fp32 --guidance dcfg --repeats 1
run --stages end_to_end --batches 64 256 --precisions fp32 --subjects 512 --guidance calibrated calibrated_nested cfg dcfg dcfg_nested dcfg_interval
run --stages train --sizes 64 128 192 --batches 32 128 --compile no --repeats 3
cp "$WORK/logs/throughput.log" "$OUT/" 2>/dev/null
