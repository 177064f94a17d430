#!/usr/bin/env bash
# The device check: the test suite (notebooks, docs and README blocks aside), the overhead
# benchmark and the peers benchmark (per-term gradients, the UPGrad step beside TorchJD's where
# torch and torchjd are installed, pip install '.[peers]'; else its JAX side: the plain,
# per-term and amortized steps to K = 32) on an accelerator, with
# results under results/device/ (or $OUT/ when set, as on the project's device machine).
# With CONFIRM=1, also the suite's confirmation tier (python -m benchmarks.report --profile
# confirm: the same protocol and records as on the CPU, the machine named in every row;
# digits_wide needs scikit-learn; CONFIRM_PROBLEMS=imbalanced_wide picks problems).
# Run from anywhere: bash benchmarks/device_check.sh
#
# GPU ops are made deterministic (--xla_gpu_deterministic_ops), as bit-exact resume from a
# checkpoint requires there; tests whose packages are missing on the machine are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/device}"
mkdir -p "$out"
export XLA_FLAGS="--xla_gpu_deterministic_ops=true ${XLA_FLAGS:-}"
python=${PYTHON:-python}

$python -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/devices.txt"
workers=()
if $python -c "import xdist" 2>/dev/null; then workers=(-n 4); fi
$python -m pytest -q "${workers[@]}" -p no:cacheprovider tests \
  --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py \
  --ignore=tests/test_demo.py --ignore=tests/test_packaging.py 2>&1 | tee "$out/tests.txt"
tests_status=${PIPESTATUS[0]}
$python -m benchmarks.overhead 2>&1 | tee "$out/overhead.txt"
bench_status=${PIPESTATUS[0]}
peers_status=0
if $python -c "import torch, torchjd" 2>/dev/null; then
  $python -m benchmarks.peers --rounds 9 --markdown "$out/peers.md" 2>&1 | tee "$out/peers.txt"
  peers_status=${PIPESTATUS[0]}
else  # the JAX side alone: the plain, per-term and amortized steps, K = 2 to 32
  $python -m benchmarks.peers --amortized --ks 2,4,8,16,32 --rounds 9 \
    --markdown "$out/peers_jax.md" 2>&1 | tee "$out/peers.txt"
  peers_status=${PIPESTATUS[0]}
fi
confirm_status=0
if [ "${CONFIRM:-0}" = 1 ]; then
  $python -m benchmarks.report --profile confirm --out "$out/confirm" \
    ${CONFIRM_PROBLEMS:+--problems "$CONFIRM_PROBLEMS"} 2>&1 | tee "$out/confirm.txt"
  confirm_status=${PIPESTATUS[0]}
fi
echo "tests exit $tests_status, overhead benchmark exit $bench_status," \
  "peers benchmark exit $peers_status, confirmation exit $confirm_status" | tee -a "$out/devices.txt"
exit $((tests_status || bench_status || peers_status || confirm_status))
