"""PrecisionArgs: parameter/compute precision and DeepSpeed's fp16/bf16 settings (group `precision`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from megatron.neox_arguments.field import arg

if TYPE_CHECKING:
    import torch


@dataclass
class PrecisionArgs:
    """Precision (group `precision`). After loading, `precision` is always resolved to one of its choices."""

    precision: Optional[str] = arg(None, "fp32, fp16 or bfloat16; None derives it from the fp16/bf16 mappings (fp32 when neither is enabled).", choices=("fp32", "fp16", "bfloat16"))
    fp16: Optional[dict[str, Any]] = arg(None, "DeepSpeed fp16 settings, e.g. {enabled: true, loss_scale: 0, initial_scale_power: 12}; GPT-NeoX's {type: bfloat16} here means bf16.")
    bf16: Optional[dict[str, Any]] = arg(None, "DeepSpeed bf16 settings, e.g. {enabled: true}.")
    fp32_allreduce: bool = arg(False, "All-reduce gradients in fp32 (DeepSpeed communication_data_type: fp32).")
    torch_autocast: bool = arg(False, "With precision bfloat16: keep fp32 parameters and run forward under torch.autocast (DeepSpeed's torch_autocast section), stepping the optimizer directly instead of through DeepSpeed's bf16 optimizer: plain PyTorch AMP's recipe, 16 instead of 18 bytes per parameter and no per-parameter host loops. ZeRO 0, 1 or 2 without tensor or pipeline parallelism; on one data-parallel rank ZeRO runs as stage 0 (partitions over one rank save nothing). Gradients are all-reduced in fp32 where fp32_allreduce is set, else Linear weights' in bf16 (DeepSpeed's lower_precision_safe_modules).")

    @property
    def dtype(self) -> torch.dtype:
        """torch dtype of the parameters and activations."""
        import torch  # imported here so that loading a config (deepy.py) stays fast

        return {"fp32": torch.float32, "fp16": torch.float16, "bfloat16": torch.bfloat16}[self.precision or "fp32"]
