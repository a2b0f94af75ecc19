#!/usr/bin/env bash
# Check and measure gpubp on a GPU in one command: the steps' time limits add up to 8 minutes.
#
#   bench/gpu_acceptance.sh OUTDIR
#
# Runs from a plain checkout (PYTHONPATH=.) on a machine with CuPy, NumPy and pytest (PyTorch optional):
#   1. gpubp info                                   -> info.txt
#   2. gpubp selftest --backend cupy --json         -> selftest.txt, selftest.json
#   3. pytest -m gpu, GPUBP_REQUIRE_GPU=1 (a skip is a failure), JUnit XML -> gpu_tests.txt, gpu_tests.xml
#   4. bench/kernels_gpu.py --json                  -> kernels.txt, kernels.json
#   5. gpubp bench --backend all (CPU and GPU side by side, PyTorch as the reference where it sees the GPU)
#                                                   -> bench.txt, bench.json, bench.md, bench.png
#   6. gpubp bench on the GPU with TF32 matmuls     -> bench_tf32.txt, bench_tf32.json, bench_tf32.md
#   7. the README's Fashion-MNIST recipe on the GPU, when the data is there ($GPUBP_DATA or the Debian path)
#                                                   -> fashion_mnist.txt, fashion_mnist.json
#   8. bench/sklearn_compare.py: gpubp.sklearn on the GPU against scikit-learn's MLPClassifier on the CPU
#      (Fashion-MNIST when present, and digits; float32, one seed) -> sklearn.txt, sklearn.json
#   9. bench/distributed_step.py on the GPU: the step fit(distributed=…) runs, 1 rank and 2 ranks sharing the
#      GPU over MPI, with the allreduce's share   -> distributed.txt, distributed.json
#  10. bench/ensemble_step.py on the GPU: ensembles of K = 1, 8, 32, 128 networks against K separate networks'
#      steps (the 50× target at K = 128)          -> ensemble.txt, ensemble.json, ensemble.md
# then summary.md: every step's status and time, and the figures that matter. Each step has its own time
# limit; a failing or timed-out step is recorded and the next one runs. The exit code is 0 only when every
# step passed.
#
# GPUBP_ACCEPTANCE_DRY_RUN=1 wires every step on the CPU instead (NumPy backend, tiny sizes, the GPU tests
# only collected): what CI runs to keep this script working on machines without a GPU.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT="$1"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DRY="${GPUBP_ACCEPTANCE_DRY_RUN:-0}"
STATUS="$OUT/status.tsv"
: > "$STATUS"
STARTED=$(date +%s)

# step NAME LIMIT_SECONDS LOGFILE COMMAND...: run with a time limit, record "name status seconds log".
step() {
    local name="$1" limit="$2" log="$3"
    shift 3
    local t0 rc status
    t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee "$OUT/$log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
    rc=$?
    case $rc in
        0) status="ok" ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit code $rc)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$log" >> "$STATUS"
    echo "   -> $status"
}

if [ "$DRY" = "1" ]; then
    BACKEND=numpy
    SELFTEST_ARGS=(--backend numpy --quick)
    PYTEST_ARGS=(-m gpu --collect-only -q)
    KERNELS=("$PY" bench/kernels_gpu.py --help)
    SWEEP=(--widths 64 --depths 2 --batches 256 --repeats 1 --no-torch)
    TF32_SWEEP=(--widths 64 --depths 2 --batches 256 --repeats 1 --no-torch)
    EPOCHS=1
    SKLEARN=(--datasets digits --seeds 1 --dtypes float32 --epochs 2)
    DISTRIBUTED=(--backend numpy --sizes 64,64,10 --batch 256 --steps 3)
    ENSEMBLE=(--backend numpy --members 1,2 --repeats 1)
else
    BACKEND=cupy
    export GPUBP_REQUIRE_GPU=1
    SELFTEST_ARGS=(--backend cupy)
    PYTEST_ARGS=(-m gpu -q)
    KERNELS=("$PY" bench/kernels_gpu.py --sizes 1,16,64 --repeats 20 --json "$OUT/kernels.json")
    SWEEP=(--widths 64,256,1024,4096,8192 --depths 2,4 --batches 256,4096,65536 --repeats 3 --max-step-s 0.5)
    TF32_SWEEP=(--widths 1024,4096,8192 --depths 4 --batches 4096,16384 --repeats 3)
    EPOCHS=30
    SKLEARN=(--seeds 1 --dtypes float32)
    DISTRIBUTED=(--backend cupy --steps 50 --overlap)
    ENSEMBLE=(--backend cupy --members 1,8,32,128 --repeats 3)
fi

step "gpubp info" 15 info.txt "$PY" -m gpubp.cli info
step "gpubp selftest" 50 selftest.txt "$PY" -m gpubp.cli selftest "${SELFTEST_ARGS[@]}" --json "$OUT/selftest.json"
step "GPU tests" 140 gpu_tests.txt "$PY" -m pytest -p no:cacheprovider "${PYTEST_ARGS[@]}" \
    --junitxml "$OUT/gpu_tests.xml"
step "kernel benchmark" 35 kernels.txt "${KERNELS[@]}"
step "gpubp bench (CPU and GPU)" 95 bench.txt "$PY" -m gpubp.cli bench --backend all "${SWEEP[@]}" \
    --json "$OUT/bench.json" --markdown "$OUT/bench.md" --plot "$OUT/bench.png"
step "gpubp bench, TF32" 30 bench_tf32.txt "$PY" -m gpubp.cli bench --backend "$BACKEND" \
    --matmul-precision tf32 "${TF32_SWEEP[@]}" --json "$OUT/bench_tf32.json" --markdown "$OUT/bench_tf32.md"
if "$PY" -c "import gpubp.datasets as d; d.fashion_mnist_dir()" > /dev/null 2>&1; then
    step "Fashion-MNIST recipe" 30 fashion_mnist.txt "$PY" -m gpubp.cli train --dataset fashion-mnist \
        --hidden 512,256 --epochs "$EPOCHS" --lr-schedule cosine --backend "$BACKEND" --no-progress \
        --history "$OUT/fashion_mnist.json"
else
    printf '%s\t%s\t%s\t%s\n' "Fashion-MNIST recipe" "not run: no Fashion-MNIST files (set GPUBP_DATA)" 0 - \
        >> "$STATUS"
fi

step "scikit-learn comparison" 30 sklearn.txt "$PY" bench/sklearn_compare.py --backend "$BACKEND" \
    "${SKLEARN[@]}" --json "$OUT/sklearn.json"
step "distributed step" 30 distributed.txt "$PY" bench/distributed_step.py "${DISTRIBUTED[@]}" \
    --json "$OUT/distributed.json"
step "ensemble step" 25 ensemble.txt "$PY" bench/ensemble_step.py "${ENSEMBLE[@]}" --json "$OUT/ensemble.json" \
    --markdown "$OUT/ensemble.md"

"$PY" bench/acceptance_summary.py "$OUT" "$(( $(date +%s) - STARTED ))" "$DRY" > "$OUT/summary.md"
cat "$OUT/summary.md"
awk -F'\t' '$2 != "ok" && $2 !~ /^not run: / { bad = 1 } END { exit bad }' "$STATUS"
