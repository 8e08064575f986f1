"""ParallelArgs: how ranks split the work (group `parallel`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class ParallelArgs:
    """Parallelism settings (group `parallel`). Every rank is a data-parallel rank for now."""

    pipe_parallel_size: int = arg(0, "Pipeline stages; 0 and 1 both mean one stage. Larger values are accepted with a notice and run as 1 (pipeline parallelism is not implemented yet).")
    model_parallel_size: int = arg(1, "Tensor-parallel ranks per model. Larger values are accepted with a notice and run as 1 (tensor parallelism is not implemented yet).")
    pipe_partition_method: str = arg("type:transformer|mlp", "How layers are spread over pipeline stages (only matters with pipeline parallelism).")
    sequence_parallel: bool = arg(False, "Megatron sequence parallelism; needs tensor parallelism, so it has no effect yet.")
    distributed_backend: str = arg("nccl", "torch.distributed backend; nccl falls back to gloo on machines without CUDA (see resolve_backend).", choices=("nccl", "gloo", "mpi"))
    global_num_gpus: Optional[int] = arg(None, "Total number of ranks the run will have; when set, the batch sizes are checked against it at load time.")

    def data_parallel_size(self, world_size: int) -> int:
        """Ranks that hold different batches: all of them while tensor/pipeline parallelism run as 1."""
        return world_size
