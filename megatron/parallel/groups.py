"""Process groups of a 3D layout, shared by megatron-core's layers and DeepSpeed.

Two libraries need groups: megatron-core's tensor-parallel layers and vocab-parallel cross-entropy
read `megatron.core.parallel_state`, and DeepSpeed takes an `mpu` (its PipelineParallelGrid, which
its pipeline module builds itself). Both are created for the same layout and checked to agree, so
a tensor-parallel group is the same set of ranks for both.
"""
from __future__ import annotations

import torch.distributed as dist

from megatron.parallel.layout import Layout


def init_megatron_core(layout: Layout) -> None:
    """Collective: megatron-core's groups for `layout` (its tensor-parallel layers read them)."""
    from megatron.core import parallel_state

    world = dist.get_world_size()
    if world != layout.world:
        raise ValueError(f"layout {layout} needs {layout.world} ranks, but the job has {world}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        create_gloo_process_groups=False,
    )


def build_grid(layout: Layout):
    """Collective: DeepSpeed's PipelineParallelGrid for `layout` (the pipeline module builds its own)."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    return PipelineParallelGrid(topology=topology(layout))


def topology(layout: Layout):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    return PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)


class Mpu:
    """DeepSpeed's grid as an `mpu`, plus the tensor-parallel group by its Megatron name.

    DeepSpeed's activation checkpointing partitions activations over
    get_tensor_model_parallel_group() when the mpu has it and otherwise over
    get_model_parallel_group(), which on the grid spans the pipeline stages as well.
    """

    def __init__(self, grid) -> None:
        self.grid = grid

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def get_tensor_model_parallel_group(self):
        return self.grid.get_slice_parallel_group()


def check_coordinates(layout: Layout, grid) -> tuple[int, int, int]:
    """This rank's (tensor, pipeline, data) coordinates, checked to agree between the layout,
    DeepSpeed's grid and megatron-core."""
    from megatron.core import parallel_state

    rank = dist.get_rank()
    expected = layout.coords(rank)
    got = (grid.get_slice_parallel_rank(), grid.get_stage_id(), grid.get_data_parallel_id())
    mcore = (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    if not expected == got == mcore:
        raise RuntimeError(
            f"rank {rank}: (tensor, pipeline, data) coordinates disagree: layout {expected}, DeepSpeed {got}, "
            f"megatron-core {mcore}; the two libraries no longer order ranks the same way"
        )
    return expected
