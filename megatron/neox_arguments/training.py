"""TrainingArgs: iterations, batch sizes, evaluation cadence, activation checkpointing (group `training`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.field import arg


class BatchSizes(NamedTuple):
    train_batch_size: int
    train_micro_batch_size_per_gpu: int
    gradient_accumulation_steps: int


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # those that replay CUDA graphs


@dataclass
class TrainingArgs:
    """What one training run does (group `training`)."""

    train_iters: Optional[int] = arg(None, "Number of optimizer steps to train for.")
    train_micro_batch_size_per_gpu: Optional[int] = arg(None, "Sequences per rank in one forward/backward pass.")
    gradient_accumulation_steps: Optional[int] = arg(None, "Micro-batches accumulated per optimizer step; None derives it from train_batch_size, else 1.")
    train_batch_size: Optional[int] = arg(None, "Sequences per optimizer step over all ranks (= micro batch x accumulation steps x data-parallel ranks); None derives it.")
    seed: int = arg(1234, "Random seed for Python, NumPy and PyTorch.")
    eval_interval: int = arg(1000, "Optimizer steps between two validation runs.")
    eval_iters: int = arg(100, "Batches per validation (and test) run.")
    exit_interval: Optional[int] = arg(None, "Stop training after an iteration divisible by this (saving the state as at the end of a run, when save is set).")
    checkpoint_activations: bool = arg(False, "Recompute layer activations in the backward pass to save memory.")
    checkpoint_num_layers: int = arg(1, "Layers per activation-checkpointing chunk.")
    partition_activations: bool = arg(False, "Split checkpointed activations across tensor-parallel ranks (no effect with one rank per model).")
    synchronize_each_layer: bool = arg(False, "CUDA synchronize around each checkpointed layer (a debugging aid; not acted on).")
    torch_compile: Optional[bool] = arg(None, "torch.compile each transformer block and the loss (regional; the attention kernels run as they are): None on for CUDA runs without pipeline parallelism, true also on CPU (needs a C++ compiler), false never.")
    torch_compile_mode: Optional[str] = arg(None, "torch.compile mode of the blocks: null (inductor's default), 'reduce-overhead' (each block replayed from CUDA graphs: far less host time per step, which small models are bound by; needs model_parallel_size 1), 'max-autotune' (also CUDA graphs) or 'max-autotune-no-cudagraphs'.")

    def batch_sizes(self, dp_world_size: int) -> BatchSizes:
        """Train batch, micro batch and accumulation steps for `dp_world_size` data-parallel ranks.

        Any two of the three determine the third (GPT-NeoX's rule); all three must agree.
        """
        if dp_world_size < 1:
            raise ConfigError(f"data-parallel world size must be >= 1, got {dp_world_size}")
        train, micro, acc = self.train_batch_size, self.train_micro_batch_size_per_gpu, self.gradient_accumulation_steps
        if micro is None and train is None:
            raise ConfigError("set train_micro_batch_size_per_gpu (sequences per rank per step) or train_batch_size (sequences per optimizer step)")
        if micro is None:
            acc = acc or 1
            micro = train // (dp_world_size * acc)
        elif train is None:
            acc = acc or 1
            train = micro * acc * dp_world_size
        elif acc is None:
            acc = train // (micro * dp_world_size)
        if micro < 1 or acc < 1 or train != micro * acc * dp_world_size:
            raise ConfigError(
                f"train_batch_size={train} must equal train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={acc} "
                f"x data-parallel ranks={dp_world_size}; change one of them (or leave one unset to derive it)"
            )
        return BatchSizes(train, micro, acc)
