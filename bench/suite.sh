#!/usr/bin/env bash
# The whole GPU measurement in one command, in stages (most needed first):
#   bash bench/suite.sh OUTDIR [STAGE ...]     stages: grid loss bench varlen (default: all four)
#
#   grid    estimator calibration: kubeft's trainer on Llama-3.2-1B (qlora, lora, full), Llama-3.1-8B
#           and Qwen2.5-7B (qlora, lora) shapes × seq 512/2048/4096 × micro-batch 1/4 × checkpointing
#           off/on/offloaded, one process per point; then merged with the committed grid
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
steps=${STEPS:-8}; loss_steps=${LOSS_STEPS:-60}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
rc=0
for stage in $stages; do
  echo "==== stage $stage ($(date -u +%H:%M:%S))"
  case $stage in
  grid)
    python3 "$here/grid.py" run --shape llama-1b --out "$out/grid" --points \
      qlora:512:1:0,qlora:512:1:1,qlora:512:4:0,qlora:512:4:1,qlora:2048:1:0,qlora:2048:1:1,qlora:2048:4:0,qlora:2048:4:1,qlora:4096:1:0,qlora:4096:1:1,qlora:4096:4:0,qlora:4096:4:1,lora:2048:1:0,lora:2048:1:1,lora:2048:4:0,lora:2048:4:1,lora:4096:1:0,full:2048:1:1,full:2048:4:0
    python3 "$here/grid.py" run --shape llama-8b --out "$out/grid" --points \
      qlora:512:4:0,qlora:2048:1:0,qlora:4096:1:1,qlora:4096:4:2,qlora:4096:1:0,lora:2048:1:1,lora:2048:4:0,lora:4096:1:1
    python3 "$here/grid.py" run --shape qwen2.5-7b --out "$out/grid" --points \
      qlora:2048:4:1,qlora:2048:1:0,qlora:4096:4:2,lora:2048:4:1,lora:512:4:0
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
