#!/usr/bin/env bash
# Training throughput on one GPU: Pythia 160M / 410M / 1.4B x seq 2048 / 8192, the minimal compiled
# PyTorch baseline, framework-vanilla and framework-sepllm, with the bf16 matmul ceiling measured first.
#   bash benchmarks/device/throughput_1gpu.sh          # on the GPU (carry .whl); about 10 minutes on an H100
#   bash benchmarks/device/throughput_1gpu.sh --models 160M 410M   # a part (later options win)
#   bash benchmarks/device/throughput_1gpu.sh --toy    # CPU smoke run of the same path
# Writes $OUT/throughput.md, $OUT/throughput.json (rewritten after every row) and $OUT/throughput.log.
# Every row runs in a fresh process (no memory or compiled graphs left over from the row before);
# rows run smallest model first; after TIME_BUDGET_S (default 330) no new row starts, and `timeout`
# ends the run 70 s later, inside a 7-minute device call, so a cut-short run still returns every
# finished row.
set -o pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
if [ "$1" = "--toy" ]; then
    args=(--toy)
else
    # 16384 tokens per micro-batch: 8 x 2048 or 2 x 8192 (the issue's reference shape); a row that
    # runs out of memory retries once at half the micro-batch. 30 timed steps after 10 warm-up ones:
    # a 160M step is ~40 ms, and over 10 steps one host stall moved a row by several percent.
    args=(--models 160M 410M 1.4B --seqs 2048 8192 --tokens-per-micro-batch 16384 --warmup 10 --steps 30
          --time-budget-s "${TIME_BUDGET_S:-330}" "$@")
fi
timeout --signal=TERM --kill-after=10 $(( ${TIME_BUDGET_S:-330} + 70 )) python3 benchmarks/train_throughput.py "${args[@]}" --out "$OUT" 2>&1 \
    | grep --line-buffered -v -E "^\[20..-..-.. ..:..:..,...\] \[INFO\]" | tee "$OUT/throughput.log"
status=$?
cat "$OUT/throughput.md" 2>/dev/null
exit $status
