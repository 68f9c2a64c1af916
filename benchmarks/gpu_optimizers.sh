#!/usr/bin/env bash
# The equal-time optimizer table of benchmarks/README.md on one GPU: tuned Adam against the best PSGD
# configuration of each task, loss and optimizer steps compiled, wall clock, at the lrs tuned on the CPU (no
# lr search: it would not fit a few minutes). Each task writes <out>/<task>/results.json and prints its table.
#
# First every task runs a few untimed steps, all tasks at once, to fill torch.compile's on-disk caches: the
# timed runs then start in seconds instead of compiling one after another (compilation is off their clock
# either way). On an H200 the warm-up of vae, speech and xor took 2.5 minutes, and each task's timed runs
# with SEEDS=1 about 3 more (PSGD's first compiled step, off the clock, takes 40-90 s on a fresh machine).
#
#   bash benchmarks/gpu_optimizers.sh [OUT] [extra benchmarks.optimizers flags, appended to every task]
#   SEEDS=1 TASKS="speech vae" bash benchmarks/gpu_optimizers.sh     # seeds 0-1 (default 0-2), two tasks
#   PHASES=warm bash ...; PHASES=timed bash ...                   # the two phases apart (default both)
#   DEVICE=cpu bash benchmarks/gpu_optimizers.sh /tmp/smoke --max-steps 4 --seeds 0 --iwae-samples 2
#                                   # checks the script on a CPU (DEVICE: default cuda)
set -euo pipefail
out=${1:-runs/gpu_optimizers}
shift || true
python=${PYTHON:-python}
warm=${WARM_DIR:-$out/warm}
common=(--device "${DEVICE:-cuda}" --clock wall --compile --compile-step --warmup-steps 3)

task_args() {
    case $1 in
        speech) echo --tasks speech --seconds 10 --optimizers adam psgd-kron-qeq1d-cap \
                     --lrs adam=3e-4 psgd-kron-qeq1d-cap=1.5e-4 --kron-max-size 256 ;;
        vae) echo --tasks vae --seconds 10 --optimizers adam psgd-kron-qeq1d \
                  --lrs adam=1e-3 psgd-kron-qeq1d=1e-3 ;;
        semisup) echo --tasks semisup --seconds 10 --optimizers adam psgd-kron-qeq1d \
                      --lrs adam=1e-2 psgd-kron-qeq1d=3e-3 --kron-max-size 128 --refit-decay 100 ;;
        # a 30-unit RNN, latency-bound on a GPU: solved (or not) within 15 s
        xor) echo --tasks xor --seconds 15 --optimizers adam psgd-kron-qeq \
                  --lrs adam=3e-4 psgd-kron-qeq=1e-3 ;;
        *) echo "unknown task $1 (speech, vae, semisup, xor)" >&2; exit 2 ;;
    esac
}
tasks=(${TASKS:-speech vae semisup xor})

phases=${PHASES:-warm timed}

if [[ $phases == *warm* ]]; then
    mkdir -p "$warm"
    for t in "${tasks[@]}"; do
        # shellcheck disable=SC2046
        "$python" -m benchmarks.optimizers "${common[@]}" $(task_args "$t") --seeds 0 --max-steps 25 \
            --iwae-samples 2 --out "$warm/$t" "$@" >"$warm/$t.log" 2>&1 &
    done
    wait || true
fi
if [[ $phases == *timed* ]]; then
    for t in "${tasks[@]}"; do
        # shellcheck disable=SC2046
        "$python" -m benchmarks.optimizers "${common[@]}" $(task_args "$t") --seeds "${SEEDS:-2}" \
            --out "$out/$t" "$@"
    done
fi
