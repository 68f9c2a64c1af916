#!/usr/bin/env bash
# The equal-time optimizer table of benchmarks/README.md ("fifth run") on one GPU: tuned Adam against the
# best PSGD configuration of each task, loss and optimizer steps compiled, wall clock, seeds 0-2 at the lrs
# tuned on the CPU (no lr search: it would not fit a few minutes). Each task writes <out>/<task>/results.json
# and prints its table. Estimated 8-12 minutes in all (not yet run on a GPU).
#
#   bash benchmarks/gpu_optimizers.sh [OUT] [extra benchmarks.optimizers flags, appended to every task]
#   DEVICE=cpu bash benchmarks/gpu_optimizers.sh /tmp/smoke --max-steps 4 --seeds 0 --iwae-samples 2
#                                   # checks the script on a CPU in about 4 minutes (DEVICE: default cuda)
set -euo pipefail
out=${1:-runs/gpu_optimizers}
shift || true
python=${PYTHON:-python}
common=(--device "${DEVICE:-cuda}" --clock wall --seeds 2 --compile --compile-step --warmup-steps 3)

"$python" -m benchmarks.optimizers --tasks vae --seconds 10 "${common[@]}" \
    --optimizers adam psgd-kron-qeq1d --lrs adam=1e-3 psgd-kron-qeq1d=1e-3 --out "$out/vae" "$@"
"$python" -m benchmarks.optimizers --tasks semisup --seconds 10 "${common[@]}" \
    --optimizers adam psgd-kron-qeq1d --lrs adam=1e-2 psgd-kron-qeq1d=7e-3 --out "$out/semisup" "$@"
"$python" -m benchmarks.optimizers --tasks speech --seconds 10 "${common[@]}" \
    --optimizers adam psgd-kron-qeq1d-cap --lrs adam=1e-3 psgd-kron-qeq1d-cap=3e-4 --kron-max-size 256 \
    --out "$out/speech" "$@"
# delayed XOR: a 30-unit RNN, latency-bound on a GPU; solved (or not) within 20 s
"$python" -m benchmarks.optimizers --tasks xor --seconds 20 "${common[@]}" \
    --optimizers adam psgd-kron-qeq --lrs adam=3e-4 psgd-kron-qeq=1e-3 --out "$out/xor" "$@"
