#!/usr/bin/env bash
# The GPU benchmarks in one command, from the repository root (benchmarks/README.md says what the machine needs):
#
#   COMFYUI_PATH=<a ComfyUI 0.33 install> bash benchmarks/gpu_run.sh
#
# Phases (PHASES="check main fp8" by default; each under its own time limit, each writing its JSON as it
# goes, so a phase that runs out of time keeps what it measured and the next phase still runs):
#   check    fp32, small config, 512^2: pack vs native vs diffusers agree to rounding (catches convention slips
#            in seconds, before the full-size run)                                            ~30 s (limit 90 s)
#   main     bf16, full 9.28 B config, random weights shared by the three implementations: correctness at 1024^2
#            (relative error <= 1e-2), then the step (cond + uncond) at 1024^2 and 2048^2 for the pack (also on
#            comfy.ops layers, as inside ComfyUI), its lever
#            variants (SDPA backends, fused norm+RoPE, two streams, CUDA graphs, manual RMSNorm), ComfyUI native
#            and diffusers; median of 5 after 2 warm-up steps                                  ~4-5 min on an H100 (limit 300 s)
#   fp8      the block Linears of one step at 1024^2 and 2048^2 with bf16 weights, fp8 weights de-quantised per call
#            (weight_dtype default/fp8) and fp8 matrix multiplies (fp8_fast): seconds and error     ~20 s (limit 60 s)
#   compile  torch.compile of the block (opt-in lever: costs compile time) with cuDNN attention, with the eager
#            bf16 rounding kept (emulate_precision_casts) and without it (fastcasts), against native
#            (limit 200 s: 1024^2 first, 2048^2 if time is left)
#   fp8step  (not in the default list) one step on a Comfy-Org-layout fp8 file pair (random, released shapes,
#            ~19 GB written to /tmp/i4-models-full, which the memory phase then reuses) through ComfyUI's Load
#            Diffusion Model path (native fp8) and the pack's DiT Loader (default, fp8_fast), at 1024^2 and 2048^2,
#            with their errors against pack default (limit 420 s)
#   memory   (not in the default list) the whole pipeline at 1024^2, V4_DEFAULT_20, fp8 weights, under ComfyUI
#            model management capped at 24 and 12 GiB; writes the random full-size files it lacks to
#            /tmp/i4-models-full first (limit 560 s)
# Results: $OUT/results.json (main), $OUT/check_fp32.json, $OUT/fp8.json, $OUT/fp8_step.json, $OUT/compile.json,
# $OUT/memory.json, the logs, $OUT/gpu.txt; the tables are printed at the end of each phase. Copy the figures into
# benchmarks/RESULTS.md with the card and the date.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PHASES="${PHASES:-check main fp8}"
VARIANTS="${VARIANTS:-sdpa=flash,sdpa=cudnn,sdpa=efficient,normrope,sdpa=cudnn+normrope,streams,graphs,rmsnorm=manual}"
PY="${PYTHON:-python3}"
# Dry run on a CPU (checks this script end to end in minutes; the CUDA-only variants fail and are reported as such):
#   DEVICE=cpu CONFIG=tiny CHECK_CONFIG=tiny SIZES="32 64" CHECK_SIZE=32 EXTRA_ARGS="--threads 1" \
#   FP8_ARGS="--width-divisor 16 --repeats 1" \
#   PYTHON=$COMFYUI_PATH/.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_run.sh
DEVICE="${DEVICE:-cuda}"
CONFIG="${CONFIG:-full}"
SIZES="${SIZES:-1024 2048}"
CHECK_SIZE="${CHECK_SIZE:-512}"
CHECK_CONFIG="${CHECK_CONFIG:-small}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
export PYTHONUNBUFFERED=1

if [ -z "${COMFYUI_PATH:-}" ] || [ ! -f "$COMFYUI_PATH/comfy/ldm/ideogram4/model.py" ]; then
  echo "gpu_run: set COMFYUI_PATH to a ComfyUI install with native Ideogram 4 (0.33 or newer)" >&2
  exit 2
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  # which comfy-kitchen backends native will use (its fused norm+RoPE kernel needs the "cuda" one)
  "$PY" -c "import comfy_kitchen as ck; print('comfy-kitchen', ck.list_backends())" || true
  date -u +"%Y-%m-%d %H:%M UTC"
} 2>&1 | tee "$OUT/gpu.txt"

status=0
for phase in $PHASES; do
  case "$phase" in
    check)
      timeout 90 "$PY" -m benchmarks.dit_step --device "$DEVICE" --config "$CHECK_CONFIG" --dtype fp32 --sizes "$CHECK_SIZE" \
        --check-only $EXTRA_ARGS --json "$OUT/check_fp32.json" 2>&1 | tee "$OUT/check.log" || status=1 ;;
    main)
      timeout 300 "$PY" -m benchmarks.dit_step --device "$DEVICE" --config "$CONFIG" --dtype bf16 --sizes $SIZES \
        --implementations pack,pack-comfyops,native,diffusers \
        --repeats 5 --warmup 2 --pack-variants "$VARIANTS" $EXTRA_ARGS --json "$OUT/results.json" 2>&1 | tee "$OUT/main.log" \
        || status=1 ;;
    fp8)
      timeout 60 "$PY" -m benchmarks.fp8_linear --device "$DEVICE" --sizes $SIZES ${FP8_ARGS:-} --json "$OUT/fp8.json" 2>&1 \
        | tee "$OUT/fp8.log" || status=1 ;;
    fp8step)
      timeout 420 "$PY" -m benchmarks.fp8_step --device "$DEVICE" --make-models --models-dir /tmp/i4-models-full --sizes $SIZES \
        ${FP8STEP_ARGS:-} --json "$OUT/fp8_step.json" 2>&1 | tee "$OUT/fp8_step.log" || status=1 ;;
    compile)
      timeout 200 "$PY" -m benchmarks.dit_step --device "$DEVICE" --config "$CONFIG" --dtype bf16 --sizes $SIZES \
        --repeats 5 --warmup 2 --implementations pack,native --pack-variants "sdpa=cudnn+compile,sdpa=cudnn+compile+fastcasts" \
        $EXTRA_ARGS --json "$OUT/compile.json" 2>&1 | tee "$OUT/compile.log" || status=1 ;;
    memory)
      timeout 560 "$PY" -m benchmarks.memory_tiers --device "$DEVICE" --make-models "${MEMORY_MODELS:-full}" \
        --models-dir /tmp/i4-models-"${MEMORY_MODELS:-full}" --caps 24 12 --size "${MEMORY_SIZE:-1024}" --runs 2 --timeout 240 --json "$OUT/memory.json" 2>&1 | tee "$OUT/memory.log" || status=1 ;;
    *) echo "gpu_run: unknown phase $phase (check, main, fp8, fp8step, compile, memory)" >&2; status=2 ;;
  esac
done
exit $status
