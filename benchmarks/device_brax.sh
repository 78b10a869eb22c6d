#!/usr/bin/env bash
# The GPU check of issue #3: Brax fully jitted on one GPU, as one script for a short device lease.
#
#   bash benchmarks/device_brax.sh            # on the GPU machine (brax & co. from wheels in .whl/ where missing)
#   TINY=1 bash benchmarks/device_brax.sh     # the same stages on CPU with a handful of envs (checks the script)
#
# Stages, each under its own time limit so that one slow stage does not eat the others:
#   1. `ppolab train --preset brax` (ant, positional pipeline, Brax's notebook settings, 50M steps), stopped by
#      SIGINT at its limit: SPS (summary.json) and the learning curve (metrics.csv, time_s per iteration), from which
#      the time to the return of Brax's published notebook run is read.
#   2. bench_brax.py with the same preset: raw env SPS (random actions) beside training SPS.
#   3. bench_brax.py on brax:hopper with the generalized pipeline (the first env).
# Before them, with TESTS="tests/a.py tests/b.py", those test files run on the GPU (pytest and hypothesis from
# .whl/test/ where missing), under the limit L0.
# Results land in $OUT (default /tmp/device_brax): bench.jsonl, ant_metrics.csv, ant_summary.json.
set -u
OUT=${OUT:-/tmp/device_brax}
mkdir -p "$OUT"
if ! python3 -c "import brax, tyro, gymnasium, tensorboardX" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
if [ -n "${TESTS:-}" ] && ! python3 -c "import pytest, hypothesis" 2>/dev/null && ls .whl/test/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-test .whl/test/*.whl \
    || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/site-test
fi
export PYTHONUNBUFFERED=1 PPOLAB_CACHE_DIR=${PPOLAB_CACHE_DIR:-/tmp/ppolab-jax-cache}
T0=$(date +%s.%N)
stamp() { python3 -c "import sys; print(f'[{float(sys.argv[1]) - float(sys.argv[2]):7.1f} s] {sys.argv[3]}')" \
  "$(date +%s.%N)" "$T0" "$1"; }
quiet() { grep -v -i -e warn -e "failed to import"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import jax, brax, mujoco, flax, optax; print('jax', jax.__version__, jax.devices(), 'brax', brax.__version__,
  'mujoco', mujoco.__version__, 'flax', flax.__version__, 'optax', optax.__version__)" 2>&1 | quiet

if [ "${TINY:-0}" != 1 ] && [ "$(python3 -c 'import jax; print(jax.default_backend())' 2>/dev/null)" != gpu ]; then
  echo "JAX sees no GPU here; stopping (TINY=1 runs the CPU check)"; exit 2
fi
if [ "${TINY:-0}" = 1 ]; then
  BENCH=(--tiny); TRAIN=(--num-envs 4 --num-steps 8 --num-minibatches 2 --num-epochs 1 --hidden-sizes 32 32
                         --total-timesteps 96 --eval-episodes 1)
  L1=600; L2=600; L3=0
else
  BENCH=(); TRAIN=(); L1=${L1:-250}; L2=${L2:-110}; L3=${L3:-110}
fi

if [ -n "${TESTS:-}" ]; then
  stamp "0. tests on the GPU: $TESTS"
  # shellcheck disable=SC2086
  timeout "${L0:-180}" python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -25
fi

stamp "1. train (preset brax: ant, positional pipeline, Brax's notebook settings)"
RUN=/tmp/device_brax_run
rm -rf "$RUN"
timeout -s INT "$L1" python3 -m ppolab.cli train --preset brax --run-dir "$RUN" --no-progress --no-tensorboard \
  "${TRAIN[@]}" 2>&1 | quiet | tail -8
echo "train exit: ${PIPESTATUS[0]}"
cp "$RUN/metrics.csv" "$OUT/ant_metrics.csv" 2>/dev/null
cp "$RUN/summary.json" "$OUT/ant_summary.json" 2>/dev/null
python3 benchmarks/device_brax_report.py "$RUN" 2>&1 | tail -60

stamp "2. bench ant (positional)"
timeout "$L2" python3 benchmarks/bench_brax.py "${BENCH[@]}" 2>&1 | quiet | tee -a "$OUT/bench.jsonl"

if [ "$L3" -gt 0 ]; then
  stamp "3. bench hopper (generalized)"
  timeout "$L3" python3 benchmarks/bench_brax.py --env hopper --backend generalized "${BENCH[@]}" 2>&1 | quiet \
    | tee -a "$OUT/bench.jsonl"
fi
stamp "done"
