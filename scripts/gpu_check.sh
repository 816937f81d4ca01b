#!/usr/bin/env bash
# usage: scripts/gpu_check.sh prepare   # here, with the venv and network: wheels + reviews into .whl/
#        scripts/gpu_check.sh run       # on a lent GPU machine, in ONE call (python 3.12, torch CUDA, no network)
#        scripts/gpu_check.sh check     # there too: only the handler on GPU vs CPU (step 1 of run)
#        scripts/gpu_check.sh workers   # there too: N in-process handler workers sharing the GPU (WORKERS="1 4 8 15")
#
# Orchestration only; the Python it runs are real, linted and tested files:
#   scripts/gpu_wheels.py        pins (what to carry, found by importing it) and slim (fit 64 MiB)
#   scripts/bench_inputs.py      the benchmark's 256-token reviews as .whl/reviews-256.tsv
#   scripts/gpu_check_handler.py the real handler on cuda:0 vs the CPU, within 1e-5 relative
#   scripts/bench_engines.py     the engine comparison (--device cuda: TF32 off, synchronised timing)
#   scripts/gpu_profile.py       the served configuration's chunk budgets, peak memory, CUDA profile
#   scripts/bench_workers.py     N processes each running the handler on the GPU (no TorchServe)
#
# The GPU machine has Python 3.12 and a CUDA torch but no Java, captum, spaCy or TorchServe, and no
# network: `prepare` downloads cp312 manylinux wheels of what gpu_wheels.py pins, slims them (~46 MiB
# with the reviews; the device call carries at most 64 MiB). `run` installs them with
# `pip install --no-index --no-deps --target /tmp/site` and runs check, the engine comparison and the
# profile; JSON goes to $OUT (the run tool brings it back) or bench_results/.
# Device call, e.g.: run(command="scripts/gpu_check.sh run", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
# The programs import the packages (imdb_bench, handler, ...) from this checkout: installed here, not on the device.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHL=.whl
VENV_PY=.venv/bin/python
PY=${PYTHON:-python3}
REVIEWS=$WHL/reviews-256.tsv
N_REVIEWS=${N_REVIEWS:-4096}
MAX_MIB=60

prepare() {
    mkdir -p "$WHL"
    mapfile -t pins < <("$VENV_PY" scripts/gpu_wheels.py pins)
    echo "wheels for: ${pins[*]}"
    rm -f "$WHL"/*.whl
    "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$WHL" "${pins[@]}"
    for w in "$WHL"/*.whl; do
        "$VENV_PY" scripts/gpu_wheels.py slim "$w" ts/frontend/ spacy/tests/ numpy/_core/tests/ numpy/tests/ \
            matplotlib/tests/ matplotlib/mpl-data/sample_data/
    done
    "$VENV_PY" scripts/bench_inputs.py "$REVIEWS" --n "$N_REVIEWS" --lengths 256
    size=$(du -sm "$WHL" | cut -f1)
    echo "$WHL: $(ls "$WHL"/*.whl | wc -l) wheels + $(wc -l < "$REVIEWS") reviews, ${size} MiB"
    if [ "$size" -gt "$MAX_MIB" ]; then
        echo "warning: over ${MAX_MIB} MiB; the device call carries at most 64 MiB" >&2
    fi
}

install() {
    [ -d "$WHL" ] || { echo "no $WHL/: run 'scripts/gpu_check.sh prepare' first and carry .whl" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$WHL"/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    out=${OUT:-bench_results}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    uptime
}

check() {
    install
    "$PY" scripts/gpu_check_handler.py --device cuda --reviews "$REVIEWS"
}

run() {
    check
    "$PY" scripts/bench_engines.py --device cuda --data "$REVIEWS" --n "$N_REVIEWS" --out "$out/engines-cuda.json"
    "$PY" scripts/gpu_profile.py --device cuda --reviews "$REVIEWS"
}

workers() {
    install
    "$PY" scripts/bench_workers.py --device cuda --workers ${WORKERS:-1 4 8 15} --data "$REVIEWS" --n 2048 \
        --out "$out/workers-cuda.json"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    check) check ;;
    workers) workers ;;
    *) sed -n '2,5p' "$0" >&2; exit 2 ;;
esac
