"""ParallelArgs: how ranks split the work (group `parallel`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.field import arg


@dataclass
class ParallelArgs:
    """Parallelism settings (group `parallel`): world size = pipe x model x data-parallel ranks."""

    pipe_parallel_size: int = arg(0, "Pipeline stages (DeepSpeed's pipeline engine, needs ZeRO stage 1); 0 and 1 both mean one stage without a pipeline engine.")
    model_parallel_size: int = arg(1, "Tensor-parallel ranks per model (megatron-core layers); must divide the attention and key/value head counts.")
    pipe_partition_method: str = arg("type:transformer|mlp", "How layers are spread over pipeline stages: 'type:REGEX' balances layers whose class matches (transformer blocks), 'parameters' or 'uniform'.")
    sequence_parallel: bool = arg(False, "Megatron sequence parallelism: norms, dropout and residuals keep 1/model_parallel_size of the sequence per rank (no effect without tensor parallelism).")
    distributed_backend: str = arg("nccl", "torch.distributed backend; nccl falls back to gloo on machines without CUDA (see resolve_backend).", choices=("nccl", "gloo", "mpi"))
    global_num_gpus: Optional[int] = arg(None, "Total number of ranks the run will have; when set, the batch sizes are checked against it at load time.")

    def data_parallel_size(self, world_size: int) -> int:
        """Ranks that hold different batches: world_size / (model_parallel_size x pipeline stages)."""
        from megatron.parallel.layout import layout_problems, pipeline_stages

        stages = pipeline_stages(self.pipe_parallel_size)
        problems = layout_problems(world_size, self.model_parallel_size, stages)
        if problems:
            raise ConfigError(problems[0])
        return world_size // (self.model_parallel_size * stages)
