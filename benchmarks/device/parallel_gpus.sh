#!/usr/bin/env bash
# GPUs of one host, NCCL: (a) loss parity of parallel layouts against one GPU, vanilla and SepLLM, fp32,
# 5 steps (benchmarks/device/parallel_parity.py); (b) per-GPU throughput of the Pythia-1.4B shape at seq
# 2048 (micro-batch 8 per GPU, framework-vanilla, DeepSpeed bf16, compiled unless --eager) with data
# parallelism over all GPUs, tensor parallelism 2 and tensor parallelism 2 + sequence parallelism,
# against the same shape on one GPU.
#   bash benchmarks/device/parallel_gpus.sh --gpus 2    # nvidia-h200-x2 (carry .whl); parity of TP=2, PP=2, DP=2
#   bash benchmarks/device/parallel_gpus.sh --gpus 4    # nvidia-h200-x4; parity of TP=2 x PP=2, data parallel 4
#   bash benchmarks/device/parallel_gpus.sh --toy       # CPU smoke run of the same path (gloo, toy model)
#   --steps "one tp2 tp2sp"   only these steps (of: parity one dp tp2 tp2sp; default all)
# Writes $OUT/parity.md, parity.json, scaling.md, scaling.json and parallel.log. Every step gets a
# share of a 540 s deadline, so a slow step cannot cost the whole run.
set -o pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/setup_env.sh
gpus=2 toy=0 steps="parity one dp tp2 tp2sp" compile=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpus) gpus=$2; shift 2;;
        --toy) toy=1; shift;;
        --steps) steps=$2; shift 2;;
        --eager) compile=(--no-compile); shift;;
        *) echo "unknown argument $1 (use --gpus N, --steps LIST, --eager or --toy)" >&2; exit 2;;
    esac
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
LOG="$OUT/parallel.log"
: > "$LOG"
DEADLINE=$((SECONDS + 540))
status=0

step() {  # step KEY NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left), logs it
    local key=$1 name=$2 limit=$3; shift 3
    case " $steps " in *" $key "*) ;; *) return;; esac
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
if [ "$toy" = 1 ]; then
    parity=(--layouts dp2 tp2)
    shape=(--toy)
elif [ "$gpus" -ge 4 ]; then
    parity=(--layouts tp2pp2)  # the 2-GPU layouts are the --gpus 2 run's
    shape=(--models 1.4B --seqs 2048 --tokens-per-micro-batch 16384 --warmup 4 --steps 8)
else
    parity=(--layouts tp2 pp2 dp2)
    shape=(--models 1.4B --seqs 2048 --tokens-per-micro-batch 16384 --warmup 4 --steps 8)
fi
# Every row runs the same step (DeepSpeed bf16, compiled or all eager) for the ratios to measure scaling:
# torch_autocast is for runs without model parallelism.
bench=(benchmarks/train_throughput.py "${shape[@]}" --impls framework-vanilla --deepspeed-bf16 "${compile[@]}")
run=(python3 -m torch.distributed.run)
# megatron-core overlaps the input-gradient all-reduce with the weight-gradient product only when the
# device runs one hardware queue (its documented requirement for tensor parallelism).
tp_env=(env CUDA_VISIBLE_DEVICES=0,1 CUDA_DEVICE_MAX_CONNECTIONS=1)

# Every parity launch compiles its blocks afresh (torch_compile is on for GPUs): three layouts took over 200 s.
step parity "NCCL parity" 300 python3 benchmarks/device/parallel_parity.py "${parity[@]}" --out "$OUT"
step one "throughput, 1 GPU" 120 env CUDA_VISIBLE_DEVICES=0 python3 "${bench[@]}" --json "$TMP/1gpu.json"
step dp "throughput, data parallel $gpus" 120 "${run[@]}" --nproc_per_node "$gpus" --master_port 29511 "${bench[@]}" --json "$TMP/dp.json"
step tp2sp "throughput, tensor parallel 2 + sequence parallel" 120 "${tp_env[@]}" "${run[@]}" --nproc_per_node 2 --master_port 29513 "${bench[@]}" \
    --model-parallel-size 2 --sequence-parallel --json "$TMP/tp2sp.json"
step tp2 "throughput, tensor parallel 2" 120 "${tp_env[@]}" "${run[@]}" --nproc_per_node 2 --master_port 29512 "${bench[@]}" --model-parallel-size 2 \
    --json "$TMP/tp2.json"
steps="$steps table"
step table "scaling table" 30 python3 benchmarks/device/scaling_table.py --reference "$TMP/1gpu.json" \
    --runs "data $gpus=$TMP/dp.json" "tensor 2=$TMP/tp2.json" "tensor 2 + SP=$TMP/tp2sp.json" --out "$OUT"
rm -rf "$TMP"
echo "== done in ${SECONDS}s, status $status" | tee -a "$LOG"
exit $status
