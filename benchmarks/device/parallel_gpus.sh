#!/usr/bin/env bash
# Two GPUs of one host (nvidia-h200-x2), NCCL: (a) loss parity of TP=2, PP=2 and DP=2 (ZeRO-1) against
# one GPU, vanilla and SepLLM, fp32, 5 steps; (b) per-GPU throughput of the Pythia-1.4B shape at seq 2048
# (micro-batch 8 per GPU, framework-vanilla) with data parallelism 2, tensor parallelism 2 and tensor
# parallelism 2 + sequence parallelism, against the same shape on one GPU.
#   bash benchmarks/device/parallel_2gpu.sh          # on the GPUs (carry .whl); about 5-6 minutes
#   bash benchmarks/device/parallel_2gpu.sh --toy    # CPU smoke run of the same path (gloo, toy model)
# Writes $OUT/parity.md, parity.json, scaling.md, scaling.json and parallel.log. Every step gets a
# share of a 460 s deadline, so a slow step cannot cost the whole run.
set -o pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
LOG="$OUT/parallel.log"
: > "$LOG"
DEADLINE=$((SECONDS + 460))
status=0

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left), logs it
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "== $name: skipped, out of time" | tee -a "$LOG"; status=1; return; fi
    echo "== $name (limit ${limit}s, $((SECONDS))s elapsed)" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 \
        | grep --line-buffered -v -E "^\[20..-..-.. ..:..:..,...\] \[INFO\]" | tee -a "$LOG"
    local rc=$?
    [ "$rc" -ne 0 ] && { echo "== $name: exit $rc" | tee -a "$LOG"; status=1; }
}

TMP=$(mktemp -d)
if [ "$1" = "--toy" ]; then
    parity=(--layouts dp2 tp2)
    shape=(--toy)
else
    parity=()
    shape=(--models 1.4B --seqs 2048 --tokens-per-micro-batch 16384 --warmup 5 --steps 10)
fi
# Eager throughout: torch_compile is refused with tensor parallelism, and one-GPU and parallel rows must
# run the same step for their ratio to measure scaling.
bench=(benchmarks/train_throughput.py "${shape[@]}" --impls framework-vanilla --no-compile)
two=(python3 -m torch.distributed.run --nproc_per_node 2)

step "throughput, 1 GPU" 110 env CUDA_VISIBLE_DEVICES=0 python3 "${bench[@]}" --json "$TMP/1gpu.json"
step "throughput, data parallel 2" 100 "${two[@]}" --master_port 29511 "${bench[@]}" --json "$TMP/dp2.json"
step "throughput, tensor parallel 2" 110 "${two[@]}" --master_port 29512 "${bench[@]}" --model-parallel-size 2 --json "$TMP/tp2.json"
step "throughput, tensor parallel 2 + sequence parallel" 110 "${two[@]}" --master_port 29513 "${bench[@]}" --model-parallel-size 2 \
    --sequence-parallel --json "$TMP/tp2sp.json"
step "scaling table" 30 python3 benchmarks/device/scaling_table.py --reference "$TMP/1gpu.json" \
    --runs "data 2=$TMP/dp2.json" "tensor 2=$TMP/tp2.json" "tensor 2 + SP=$TMP/tp2sp.json" --out "$OUT"
step "NCCL parity" 240 python3 benchmarks/device/parallel_parity.py "${parity[@]}" --out "$OUT"
rm -rf "$TMP"
echo "== done in ${SECONDS}s, status $status" | tee -a "$LOG"
exit $status
