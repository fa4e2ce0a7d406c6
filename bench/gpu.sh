#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call: CUDA tests, then the CUDA benchmarks.
# Run from the repository root:  bash bench/gpu.sh   (prints a short summary table last)
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-/tmp/treadle-gpu}"
mkdir -p "$OUT_DIR"
summary=()

run() {  # run NAME TIMEOUT COMMAND...: keep going on failure, remember the outcome
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  if timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"; then
    summary+=("$name: ok")
  else
    summary+=("$name: FAILED (see $name.log)")
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
run gpu-tests 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests
run bench-step 150 python3 bench/bench_step.py --devices cuda --rounds 30
[ -f bench/bench_timer_gpu.py ] && run bench-timer 150 python3 bench/bench_timer_gpu.py --budget 60
[ -f bench/gpu_distributed.py ] && [ -z "${SKIP_DISTRIBUTED:-}" ] && run ddp-fsdp 180 python3 bench/gpu_distributed.py

echo
echo "=== summary"
for line in "${summary[@]}"; do echo "$line"; done
for name in bench-step bench-timer ddp-fsdp; do
  [ -f "$OUT_DIR/$name.log" ] && { echo "--- $name"; tail -n 12 "$OUT_DIR/$name.log"; }
done
