# Sourced on the device: FlashAttention-4 beside the image's torch, from the halves fa4_wheels.sh made.
#   call 1 (carry .fa4a):  . benchmarks/device/install_fa4.sh stash
#   call 2 (carry .fa4b):  . benchmarks/device/install_fa4.sh install   (within the machine's idle window)
# `install` exports PYTHONPATH so that `import flash_attn.cute` works in this shell.
case "${1:-}" in
stash)
    mkdir -p /tmp/fa4whl && cp .fa4a/* /tmp/fa4whl/ && echo "fa4: stashed $(ls /tmp/fa4whl | wc -l) files" ;;
install)
    if [ ! -f /tmp/fa4whl/cu13.part1 ]; then
        echo "fa4: /tmp/fa4whl is empty: the machine was released after the stash call; run the stash call again" >&2
        return 3 2>/dev/null || exit 3
    fi
    big=$(cut -d' ' -f3 .fa4b/cu13.sha256)
    cat /tmp/fa4whl/cu13.part1 .fa4b/cu13.part2 > "/tmp/fa4whl/$big"
    (cd /tmp/fa4whl && sha256sum -c --quiet "$OLDPWD/.fa4b/cu13.sha256") || { echo "fa4: checksum mismatch" >&2; return 4 2>/dev/null || exit 4; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site /tmp/fa4whl/*.whl || { return 5 2>/dev/null || exit 5; }
    # what the nvidia-cutlass-dsl .pth file would add (--target installs do not run .pth files)
    export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
    python3 -c "import flash_attn.cute, importlib.metadata as m; print('fa4:', m.version('flash-attn-4'))" ;;
*)
    echo "usage: . benchmarks/device/install_fa4.sh stash|install" >&2 ;;
esac
