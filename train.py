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
        check_launch(args)
    except ConfigError as e:  # before any process group or GPU work, so every rank stops here alike
        sys.exit(f"config error: {e}")
    prepare_accelerator_env()
    from megatron.checkpointing.checkpoint import CheckpointError
    from megatron.data.indexed_format import IndexedDatasetError
    from megatron.parallel.distributed import end_process
    from megatron.training.trainer import pretrain

    try:
        pretrain(args)
    except CheckpointError as e:  # a damaged or mismatched checkpoint: the message says which and why
        sys.exit(f"checkpoint error: {e}")
    except IndexedDatasetError as e:  # a damaged, mismatched or misaligned dataset, named with the fix
        sys.exit(f"data error: {e}")
    end_process(0)


def check_launch(args) -> None:
    """What deepy.py checks before it starts ranks, for ranks started by torchrun, srun or mpirun."""
    import torch

    from megatron.neox_arguments.distributed import distributed_env
    from megatron.neox_arguments.launch_command import check_training_device

    check_training_device(args, cuda_available=torch.cuda.is_available())
    world = distributed_env(args.launcher).world_size
    args.training.batch_sizes(args.parallel.data_parallel_size(world))


if __name__ == "__main__":
    main(sys.argv[1:])
