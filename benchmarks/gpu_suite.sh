#!/usr/bin/env bash
# Every GPU figure the README claims, in one run on one H100/H200-class GPU (about 9 minutes; each section has a
# time limit so that one slow part cannot eat the others). Full-size architectures with random weights: nothing
# is downloaded. Prints each benchmark's own output under a header; the summary lines at the end say which
# sections finished.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine, from the repository root, after `make install`
#   SMOKE=1 bash benchmarks/gpu_suite.sh    # the same sections at toy sizes on the CPU: checks the plumbing
set -uo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-../.venv/bin/python}
SMOKE=${SMOKE:-0}
declare -a SUMMARY=()

section() {  # section NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  local status=$?
  local took=$((SECONDS - start))
  if [ $status -eq 0 ]; then SUMMARY+=("ok       $name (${took} s)"); else SUMMARY+=("FAILED   $name (exit $status after ${took} s)"); fi
}

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  section "UNet step, adapter vs base, fp32" 300 $PYTHON bench_unet_overhead.py --arch sd15 --latent 8 --rounds 1 --layer-repeats 2 --device cpu
  section "generation images/s" 300 $PYTHON bench_generation.py --arch tiny --resolution 64 --steps 2 --batch 2 --images 2 --no-compile
  section "training with and without the cache" 300 $PYTHON bench_training.py --arch tiny --resolution 64 --images 16 --batch-size 4 --steps 4
  section "annotation images/s, built-in metrics" 300 $PYTHON bench_annotate.py --images 8 --rounds 1 --device cpu
  section "LoDa throughput" 300 $PYTHON bench_loda.py --presets tiny --device cpu --rounds 1
  section "IQA-gradient guidance step" 300 $PYTHON bench_guidance.py --latent 8 --repeats 1 --device cpu
  section "evaluation images/s" 300 $PYTHON bench_evaluate.py --arch tiny --resolution 64 --steps 2 --prompts 2,4 --seeds 1
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  section "SDXL UNet step at 128x128 latents, adapter vs base, negative guidance vs CFG, fp16" 60 \
    $PYTHON bench_unet_overhead.py --latent 128 --device cuda --dtype fp16 --rounds 5
  section "the same in bf16" 60 $PYTHON bench_unet_overhead.py --latent 128 --device cuda --dtype bf16 --rounds 5
  section "generation images/s, SDXL 1024 px, 35 steps, with and without torch.compile" 150 \
    $PYTHON bench_generation.py --device cuda --dtype fp16 --batch 4 --images 4
  section "training samples/s with and without the cache, SDXL 1024 px, bf16" 100 \
    $PYTHON bench_training.py --arch sdxl --resolution 1024 --images 32 --batch-size 4 --steps 8 --mixed-precision bf16
  section "annotation images/s, built-in metrics" 30 $PYTHON bench_annotate.py --device cuda --rounds 2
  section "LoDa throughput" 30 $PYTHON bench_loda.py --device cuda --presets base,tiny
  section "IQA-gradient guidance step, SDXL VAE, 1024 px" 30 $PYTHON bench_guidance.py --latent 128 --device cuda --dtype fp16
  section "evaluation images/s (generated and scored), SDXL 1024 px, 35 steps, base p1 p99" 80 \
    $PYTHON bench_evaluate.py --arch sdxl --device cuda --dtype fp16 --resolution 1024 --steps 35 --prompts 4 --seeds 1
fi

echo
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
