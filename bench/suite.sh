#!/usr/bin/env bash
# The whole GPU measurement in one command, in stages (most needed first):
#   bash bench/suite.sh OUTDIR [STAGE ...]     stages: grid loss bench varlen (default: all four)
#
#   grid    estimator calibration: kubeft's trainer on Llama-3.2-1B, Qwen2.5-1.5B and Qwen2.5-0.5B (qlora,
#           lora, full), Qwen2.5-7B, Llama-3.1-8B and Mistral-7B (qlora, lora, one full) shapes × seq 512/2048/4096 × micro-batch
#           1/4 × checkpointing off/on/offloaded, one process per point, on one GPU (two streams in
#           parallel on a 2-GPU host, GRID_TIMEOUT seconds each); then merged with the committed grid
#           (OUTDIR/estimator_grid.json) and fitted (OUTDIR/fit.md; exit 1 there = no constants fit)
#   loss    does speed change what is learnt: the peer (two seeds), kubeft lean and kubeft auto on the
#           1B shape for LOSS_STEPS steps of a quickly learnable task (OUTDIR/loss-1b/results.md)
#   bench   speed and memory against the peer (1B and 8B, with the plain recipe and the lean profile
#           under expandable_segments), STEPS timed steps each
#   varlen  the packed attention's numerics and time
# Device time on an H100 (estimates): grid ≈ 15 min, loss ≈ 6 min, bench ≈ 12 min, varlen < 1 min.
set -u
out=${1:-/tmp/bench/suite}; shift || true
stages=${*:-grid loss bench varlen}
steps=${STEPS:-8}; loss_steps=${LOSS_STEPS:-60}; grid_timeout=${GRID_TIMEOUT:-3600}
# The grid's points (method:seq_len:micro_batch:checkpointing 0 off / 1 on / 2 offloaded), per shape:
# three architectures whose head ratios, MLP widths and vocabularies differ, each method, with and
# without checkpointing, three lengths and two micro-batches. Most telling first.
GRID_LLAMA_1B=qlora:512:1:1,qlora:2048:4:0,qlora:4096:1:1,qlora:4096:4:2,lora:2048:1:0,lora:2048:4:0,lora:4096:1:0,lora:2048:4:1,full:512:1:1,full:2048:1:1,full:4096:1:1,full:2048:4:0,qlora:2048:4:2,lora:2048:4:2,full:2048:4:1,lora:512:4:0,qlora:512:4:0
GRID_QWEN_1B5=qlora:512:1:1,qlora:2048:1:0,qlora:2048:4:0,qlora:4096:4:1,qlora:4096:4:2,lora:2048:1:0,lora:2048:4:0,lora:4096:1:1,full:2048:1:1,full:2048:4:0,full:512:4:1
GRID_QWEN_7B=qlora:2048:1:0,qlora:2048:4:1,qlora:4096:4:2,qlora:512:4:0,lora:2048:4:1,lora:512:4:0,lora:2048:1:0,lora:4096:1:1
GRID_QWEN_0B5=qlora:2048:4:0,lora:2048:4:0,full:2048:1:1,qlora:4096:4:1,lora:4096:4:2,full:1024:4:0,qlora:512:1:1,lora:2048:4:1
GRID_MISTRAL_7B=qlora:2048:4:1,qlora:2048:1:0,lora:2048:2:0,lora:4096:1:1,qlora:4096:4:2
GRID_LLAMA_8B=qlora:2048:1:0,qlora:4096:1:1,qlora:4096:4:2,qlora:512:4:0,lora:2048:4:0,lora:2048:1:1,lora:4096:1:0,full:2048:1:1,lora:4096:4:2,qlora:4096:4:1
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
rc=0
for stage in $stages; do
  echo "==== stage $stage ($(date -u +%H:%M:%S))"
  case $stage in
  grid)
    # two streams (small shapes, large shapes); in parallel, one GPU each, when the host has two
    small="python3 $here/grid.py run --shape llama-1b --out $out/grid --points $GRID_LLAMA_1B &&
      python3 $here/grid.py run --shape qwen2.5-1.5b --out $out/grid --points $GRID_QWEN_1B5 &&
      python3 $here/grid.py run --shape qwen2.5-0.5b --out $out/grid --points $GRID_QWEN_0B5"
    large="python3 $here/grid.py run --shape qwen2.5-7b --out $out/grid --points $GRID_QWEN_7B &&
      python3 $here/grid.py run --shape llama-8b --out $out/grid --points $GRID_LLAMA_8B &&
      python3 $here/grid.py run --shape mistral-7b --out $out/grid --points $GRID_MISTRAL_7B"
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
      CUDA_VISIBLE_DEVICES=0 timeout "$grid_timeout" bash -c "$small" > "$out/grid-small.log" 2>&1 &
      CUDA_VISIBLE_DEVICES=1 timeout "$grid_timeout" bash -c "$large" > "$out/grid-large.log" 2>&1 &
      wait
      cat "$out/grid-small.log" "$out/grid-large.log"
    else
      timeout "$grid_timeout" bash -c "$small && $large"
    fi
    python3 "$here/grid.py" collect "$here/results/estimator_grid.json" "$out/grid" --into "$out/estimator_grid.json"
    python3 "$here/fit.py" "$out/estimator_grid.json" --json "$out/fit.json" | tee "$out/fit.md" || rc=1
    ;;
  loss)
    python3 "$here/run.py" --shapes llama-1b --trainers peer,peer@1,kubeft-lean,kubeft --steps "$loss_steps" \
      --warmup 3 --lr 1e-3 --task-vocab 256 --eval-samples 32 --out "$out/loss-1b" || rc=1
    ;;
  bench)
    python3 "$here/run.py" --shapes llama-1b --trainers plain,peer,kubeft-lean,kubeft --steps "$steps" --warmup 3 \
      --out "$out/bench-1b" || rc=1
    python3 "$here/run.py" --shapes llama-8b \
      --trainers peer,kubeft-lean,kubeft-lean-expseg,kubeft,kubeft-configured,plain --steps "$steps" --warmup 3 \
      --out "$out/bench-8b" || rc=1
    ;;
  varlen)
    python3 "$here/check_varlen.py" 2>&1 | tee "$out/check_varlen.txt"
    ;;
  *)
    echo "unknown stage $stage (grid loss bench varlen)" >&2; exit 2
    ;;
  esac
done
echo "==== done ($(date -u +%H:%M:%S)), rc=$rc"
exit $rc
