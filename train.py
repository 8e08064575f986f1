"""Train a GPT-NeoX / Llama-shaped model, optionally with SepLLM attention.

    python deepy.py train.py configs/demo.yml              # through the launcher
    python train.py configs/demo.yml                       # one process
    torchrun --nproc_per_node 2 train.py configs/demo.yml  # several processes
"""
import sys

from megatron.parallel.distributed import prepare_accelerator_env


def main(argv: list[str]) -> None:
    from megatron.neox_arguments import ConfigError, NeoXArgs

    if not argv:
        sys.exit("usage: python train.py CONFIG.yml [MORE.yml ...]")
    try:
        args = NeoXArgs.from_files(argv)
        args.validate_for("train")
    except ConfigError as e:  # validation happens before any process group or GPU work
        sys.exit(f"config error: {e}")
    prepare_accelerator_env()
    from megatron.training.trainer import pretrain

    pretrain(args)


if __name__ == "__main__":
    main(sys.argv[1:])
