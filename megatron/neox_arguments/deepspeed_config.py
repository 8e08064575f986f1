"""The DeepSpeed config dict of a run: batch sizes, clipping, ZeRO, precision and logging.

The optimizer and the learning-rate schedule are not in it: the trainer builds both itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megatron.neox_arguments.neox_args import NeoXArgs

# Top-level DeepSpeed keys this module writes; deepspeed_extra_args may not set them again.
DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "zero_optimization", "fp16", "bf16", "steps_per_print", "wall_clock_breakdown", "communication_data_type",
)

# Keys GPT-NeoX configs put in the fp16 mapping that DeepSpeed's fp16 section rejects.
_NEOX_ONLY_FP16_KEYS = ("fp16", "type")


def build_deepspeed_config(args: "NeoXArgs", dp_world_size: int) -> dict[str, Any]:
    """The dict for deepspeed.initialize(config=...), for `dp_world_size` data-parallel ranks."""
    batch = args.training.batch_sizes(dp_world_size)
    config: dict[str, Any] = {
        "train_batch_size": batch.train_batch_size,
        "train_micro_batch_size_per_gpu": batch.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "gradient_clipping": args.optimizer.gradient_clipping,
        "zero_optimization": dict(args.optimizer.resolved_zero),
        "steps_per_print": args.logging.steps_per_print,
        "wall_clock_breakdown": args.logging.wall_clock_breakdown,
    }
    precision = args.precision
    if precision.precision == "fp16":
        fp16 = {k: v for k, v in (precision.fp16 or {}).items() if k not in _NEOX_ONLY_FP16_KEYS}
        config["fp16"] = {**fp16, "enabled": True}
    elif precision.precision == "bfloat16":
        config["bf16"] = {**(precision.bf16 or {}), "enabled": True}
    if precision.fp32_allreduce:
        config["communication_data_type"] = "fp32"
    config.update(args.launcher.deepspeed_extra_args or {})
    return config
