#!/usr/bin/env bash
# The whole GPU measurement in one command: attention check, bench (1B and 8B), estimator grid.
#   bash bench/suite.sh OUTDIR [STEPS]
set -u
out=${1:-/tmp/bench/suite}; steps=${2:-8}
mkdir -p "$out"
python3 bench/check_varlen.py 2>&1 | tee "$out/check_varlen.txt"
python3 bench/run.py --shapes llama-1b --trainers plain,peer,kubeft-lean,kubeft --steps "$steps" --warmup 3 \
  --out "$out/bench-1b"
python3 bench/run.py --shapes llama-8b --trainers peer,kubeft-lean,kubeft,kubeft-configured,plain --steps "$steps" \
  --warmup 3 --out "$out/bench-8b"
python3 bench/grid.py --shape llama-1b --out "$out/grid" --points \
  qlora:512:4:1,qlora:512:4:0,qlora:4096:1:1,qlora:4096:1:0,qlora:4096:4:1,qlora:4096:4:0,lora:2048:4:1,lora:2048:4:0,full:2048:1:1,full:2048:4:0
python3 bench/grid.py --shape llama-8b --out "$out/grid" --points \
  qlora:2048:4:1,qlora:2048:4:2,qlora:2048:4:0,qlora:4096:1:1,lora:2048:1:1
python3 bench/grid.py --shape qwen2.5-7b --out "$out/grid" --points qlora:2048:4:1,qlora:2048:2:0
