"""The 3D layout of a run (tensor x pipeline x data parallel ranks) and the checks that it fits.

Every check returns problems as text naming the setting to change, so the config loader (before
launch) and the trainer (at startup, when the world size is known) give the same messages.

Rank order is DeepSpeed's PipeModelDataParallelTopology and megatron-core's default: tensor-parallel
ranks are adjacent (rank = (pipe * dp + data) * tp + model), so a tensor-parallel group stays inside
one node whenever tp divides the GPUs per node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# ZeRO stages each kind of layout can use. DeepSpeed's pipeline engine refuses ZeRO-2/3, and under
# ZeRO-0 its gradient clipping drops the gradients of every stage but the first from the norm (it
# counts whole parameters only on "model-parallel rank 0", which spans the stages); ZeRO-3 would
# shard megatron-core's already split weights again.
PIPELINE_ZERO_STAGES = (1,)
TENSOR_PARALLEL_ZERO_STAGES = (0, 1, 2)
SUPPORTED_ZERO = (
    "supported combinations: ZeRO 0-3 with data parallelism only; ZeRO 0-2 with tensor parallelism "
    "(model_parallel_size > 1); ZeRO 1 with pipeline parallelism (pipe_parallel_size > 1), alone or with tensor parallelism"
)


@dataclass(frozen=True)
class Layout:
    """tp x pp x dp ranks; `world` = their product."""

    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(tp_rank, pp_rank, dp_rank) of a global rank."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a layout of {self.world} ranks")
        return rank % self.tp, rank // (self.tp * self.dp), (rank // self.tp) % self.dp

    def rank(self, tp_rank: int, pp_rank: int, dp_rank: int) -> int:
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank

    def __str__(self) -> str:
        return f"tensor {self.tp} x pipeline {self.pp} x data {self.dp}"


def pipeline_stages(pipe_parallel_size: int) -> int:
    """GPT-NeoX's pipe_parallel_size: 0 (no pipeline engine) and 1 both mean a single stage."""
    return max(int(pipe_parallel_size), 1)


def layout_problems(world_size: int, tp: int, pp: int) -> list[str]:
    """Why `world_size` ranks cannot be split into tp x pp x data ranks (empty when they can)."""
    if tp < 1 or pp < 1:
        return [f"model_parallel_size ({tp}) and pipe_parallel_size ({pp}) must be >= 1"]
    if world_size % (tp * pp):
        return [
            f"the {world_size} ranks of this job do not factor into pipe_parallel_size {pp} x model_parallel_size {tp} "
            f"x data-parallel ranks: the world size must be a multiple of {tp * pp}. Change the number of GPUs "
            f"(num_gpus / hostfile / global_num_gpus) or the parallel sizes"
        ]
    return []


def resolve_layout(world_size: int, model_parallel_size: int, pipe_parallel_size: int) -> Layout:
    """The layout of a job of `world_size` ranks; raises ValueError with the fix when it does not factor."""
    tp, pp = int(model_parallel_size), pipeline_stages(pipe_parallel_size)
    problems = layout_problems(world_size, tp, pp)
    if problems:
        raise ValueError(problems[0])
    return Layout(tp=tp, pp=pp, dp=world_size // (tp * pp))


def model_problems(
    tp: int,
    pp: int,
    *,
    num_layers: Optional[int],
    num_heads: Optional[int],
    num_kv_heads: Optional[int],
    mlp_width: Optional[int] = None,
    seq_length: Optional[int] = None,
    sequence_parallel: bool = False,
) -> list[str]:
    """Why a model of these sizes cannot be split over tp tensor-parallel ranks and pp stages."""
    problems = []
    if tp > 1:
        if num_heads and num_heads % tp:
            problems.append(
                f"num_attention_heads {num_heads} is not divisible by model_parallel_size {tp}: every tensor-parallel "
                "rank must hold whole heads. Choose a model_parallel_size that divides the head count"
            )
        kv = num_kv_heads
        if kv and kv != num_heads and kv % tp:
            problems.append(
                f"num_kv_heads {kv} is not divisible by model_parallel_size {tp}: every tensor-parallel rank must "
                "hold whole key/value heads (with their query heads). Choose a model_parallel_size that divides it"
            )
        if mlp_width and mlp_width % tp:
            problems.append(
                f"the MLP width {mlp_width} is not divisible by model_parallel_size {tp}; change intermediate_size "
                "or mlp_multiple_of so that it is"
            )
        if sequence_parallel and seq_length and seq_length % tp:
            problems.append(
                f"sequence_parallel splits the sequence over the {tp} tensor-parallel ranks, but seq_length "
                f"{seq_length} is not divisible by {tp}"
            )
    if pp > 1 and num_layers and num_layers < pp:
        problems.append(
            f"pipe_parallel_size {pp} is larger than num_layers {num_layers}; every pipeline stage needs at least "
            "one transformer layer"
        )
    return problems


def zero_problems(zero_stage: int, tp: int, pp: int) -> list[str]:
    """Why ZeRO `zero_stage` cannot run with this layout (empty when it can)."""
    if pp > 1 and zero_stage not in PIPELINE_ZERO_STAGES:
        return [
            f"ZeRO stage {zero_stage} does not work with pipeline parallelism (pipe_parallel_size {pp}): DeepSpeed's "
            f"pipeline engine refuses ZeRO 2 and 3 and computes the clipping norm wrong under ZeRO 0. Set "
            f"zero_optimization.stage to 1, or pipe_parallel_size to 1; {SUPPORTED_ZERO}"
        ]
    if tp > 1 and zero_stage not in TENSOR_PARALLEL_ZERO_STAGES:
        return [
            f"ZeRO stage {zero_stage} does not work with tensor parallelism (model_parallel_size {tp}). Set "
            f"zero_optimization.stage to 1 or 2; {SUPPORTED_ZERO}"
        ]
    return []
