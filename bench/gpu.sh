#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call of about 8 minutes: the benchmarks that run treadle side
# by side with the hand-written PyTorch loop (and Lightning Fabric when importable), the CUDA tests, then ONE
# table of every figure, each with the card's name (bench/gpu_table.py).
#
#   bash bench/gpu.sh              on the GPU machine, from the repository root
#   bash bench/gpu.sh --dry-run    on CPU with tiny sizes: every code path, in well under a minute
#                                  (the same as TREADLE_BENCH_DRY_RUN=1 bash bench/gpu.sh)
#
# Each part has a time limit, and all of them share BENCH_BUDGET_S (default 480 s): a part starts with the
# smaller of its own limit and what is left, and is skipped when under 15 s are left, so the call ends in
# time whatever hangs. Parts run in order of importance. Logs and rows.jsonl go to $OUT (or /tmp/treadle-gpu).
# PYTHON picks the interpreter (default python3); SKIP_TESTS=1 / SKIP_DISTRIBUTED=1 leave those parts out.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
DRY=${TREADLE_BENCH_DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
[ "$DRY" = 0 ] || DRY=1
export TREADLE_BENCH_DRY_RUN=$DRY
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR="${OUT:-/tmp/treadle-gpu}"
mkdir -p "$OUT_DIR"
ROWS="$OUT_DIR/rows.jsonl"
: > "$ROWS"
BUDGET=${BENCH_BUDGET_S:-480}
START=$SECONDS

status() {  # status PART TEXT: a line of the table's "parts" summary
  "$PY" -c 'import json, sys; print(json.dumps({"part": sys.argv[1], "status": sys.argv[2]}))' "$1" "$2" >> "$ROWS"
}

part() {  # part NAME LIMIT COMMAND...: run under min(LIMIT, budget left), log to NAME.log, record the outcome
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 15 )); then
    status "$name" "skipped (the ${BUDGET} s budget is spent)"
    return
  fi
  echo "=== $name (limit ${limit} s): $*"
  local began=$SECONDS rc
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  local took=$(( SECONDS - began ))
  case $rc in
    0) status "$name" "ok (${took} s)" ;;
    124|137) status "$name" "TIMED OUT after ${took} s (see $name.log)" ;;
    *) status "$name" "FAILED with exit code $rc after ${took} s (see $name.log)" ;;
  esac
}

if [ "$DRY" = 1 ]; then
  echo "dry run: CPU, tiny sizes; the figures mean nothing, the code paths are what is checked"
  "$PY" -c "import torch; print('torch', torch.__version__)"
  # Tiny-model per-step overhead, 32-true and bf16-mixed.
  part step 60 "$PY" bench/bench_step.py --devices cpu --rounds 2 --steps 5 --rows "$ROWS"
  # GPT-2-small-sized model: eager, launch-bound, torch.compile (a per-model eager backend on CPU); one
  # process for the three here, to keep the dry run short.
  part gpt 60 "$PY" bench/bench_gpt_gpu.py --part eager --part launch --part compile --device cpu --tiny \
    --rounds 2 --steps 2 --warmup 1 --rows "$ROWS"
  # FSDP2 vs DDP at world size 1 (gloo), with the step's breakdown and the profiler.
  part fsdp-breakdown 60 "$PY" bench/bench_fsdp_gpu.py --device cpu --tiny --rounds 2 --steps 2 --warmup 1 \
    --breakdown-steps 2 --rows "$ROWS"
  # The one-process-per-configuration DDP/FSDP2 script; its other two configurations (`treadle run`, a full
  # checkpoint) only add processes here, and the test suite covers those paths.
  [ -z "${SKIP_DISTRIBUTED:-}" ] && part ddp-fsdp 90 "$PY" bench/gpu_distributed.py --smoke --only ddp \
    --only fsdp-sharded --rows "$ROWS"
  status gpu-tests "not run (dry run: they need CUDA)"
  status async-save "not run (dry run: the slot runs bench/bench_async_save.py --device cuda on the GPU)"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  part step 60 "$PY" bench/bench_step.py --devices cuda --rounds 20 --rows "$ROWS"
  part gpt-eager 100 "$PY" bench/bench_gpt_gpu.py --part eager --rounds 6 --steps 8 --rows "$ROWS"
  part gpt-launch 60 "$PY" bench/bench_gpt_gpu.py --part launch --rounds 8 --steps 40 --rows "$ROWS"
  part fsdp-breakdown 90 "$PY" bench/bench_fsdp_gpu.py --rounds 5 --steps 10 --rows "$ROWS"
  part gpt-compile 180 "$PY" bench/bench_gpt_gpu.py --part compile --rounds 5 --steps 8 --rows "$ROWS"
  if [ -z "${SKIP_TESTS:-}" ]; then
    part gpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
  fi
  [ -z "${SKIP_DISTRIBUTED:-}" ] && part ddp-fsdp 100 "$PY" bench/gpu_distributed.py --rows "$ROWS"
  # Slot for D's async checkpoint saves (pinned host copies): runs once the script exists.
  [ -f bench/bench_async_save.py ] && part async-save 60 "$PY" bench/bench_async_save.py --device cuda
  [ -f bench/bench_timer_gpu.py ] && part bench-timer 60 "$PY" bench/bench_timer_gpu.py --budget 20
fi

echo
echo "=== table ($(( SECONDS - START )) s of the ${BUDGET} s budget used)"
"$PY" bench/gpu_table.py "$ROWS"
for name in gpu-tests async-save bench-timer; do
  [ -f "$OUT_DIR/$name.log" ] && { echo "--- $name (last lines)"; tail -n 8 "$OUT_DIR/$name.log"; }
done
exit 0
