# Sourced by the device scripts: the environment every GPU run here needs.
#   . benchmarks/device/setup_env.sh
# The device image lacks deepspeed, megatron-core, hjson and pydantic; they travel as wheels in .whl
# (carry .whl). Installed only where deepspeed or megatron-core cannot be imported, so the same
# scripts run unchanged on a machine that has them (CPU checks here).
if ! python3 -c "import deepspeed, megatron.core" >/dev/null 2>&1; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: carry .whl (see benchmarks/device/README.md)" >&2; exit 3; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
# NVLink multicast stays off on shared hosts (it can take every GPU of the host out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
