#!/bin/bash
# Here (network): download FlashAttention-4 (CuTe DSL) and what it needs for the device's Python 3.12 /
# CUDA 13 image, in two halves that each fit one device call (64 MiB): .fa4a/ and .fa4b/.
# On the device: `. benchmarks/device/install_fa4.sh stash` in a call carrying .fa4a, then, in the next
# call while the machine is still warm, `. benchmarks/device/install_fa4.sh install` carrying .fa4b.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any -d "$tmp" "$@"; }
dl --pre flash-attn-4==4.0.0b36
dl nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 \
   nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 \
   cuda-bindings==13.5.0 cuda-pathfinder==1.9.0 "protobuf==6.33.6" einops==0.8.1
rm -rf .fa4a .fa4b && mkdir -p .fa4a .fa4b
big=$(ls "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl)
mv $(ls "$tmp"/*.whl | grep -v nvidia_cutlass_dsl_libs_cu13) .fa4a/
head -c 40000000 "$big" > .fa4a/cu13.part1
tail -c +40000001 "$big" > .fa4b/cu13.part2
(cd "$tmp" && sha256sum "$(basename "$big")") > .fa4b/cu13.sha256
rm -rf "$tmp"
du -sh .fa4a .fa4b
