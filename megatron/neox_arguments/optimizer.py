"""OptimizerArgs: the optimizer as GPT-NeoX spells it, weight decay, clipping and ZeRO (group `optimizer`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron.neox_arguments.field import arg

DEFAULT_OPTIMIZER = {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1.0e-8}}

# DeepSpeed's ZeRO defaults; a configured `zero_optimization` mapping replaces this one as a whole.
ZERO_DEFAULTS = {
    "stage": 0,
    "allgather_partitions": True,
    "reduce_scatter": True,
    "allgather_bucket_size": 500_000_000,
    "overlap_comm": False,
    "reduce_bucket_size": 500_000_000,
    "contiguous_gradients": False,
}

# Optimizer `type`s the trainer builds (compared lower-case), with the `params` keys each takes.
_ADAM_PARAMS = ("lr", "betas", "eps", "weight_decay", "amsgrad")
OPTIMIZER_PARAMS = {
    "adam": _ADAM_PARAMS,
    "adamw": _ADAM_PARAMS,
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay"),
}
OPTIMIZER_TYPES = tuple(OPTIMIZER_PARAMS)


@dataclass
class OptimizerArgs:
    """Optimizer settings (group `optimizer`)."""

    optimizer: Optional[dict[str, Any]] = arg(None, "Optimizer as {type: Adam, params: {lr, betas, eps, ...}}; None means Adam with lr 0.001, betas (0.9, 0.999), eps 1e-8.")
    weight_decay: float = arg(0.1, "Weight decay, not applied to biases and norm weights: decoupled for Adam/AdamW, L2 for SGD (as in GPT-NeoX).")
    gradient_clipping: float = arg(1.0, "Clip the global gradient L2 norm to this; 0 disables clipping.")
    zero_optimization: Optional[dict[str, Any]] = arg(None, "DeepSpeed ZeRO settings, e.g. {stage: 1, overlap_comm: true}; None means stage 0 with DeepSpeed's defaults.")

    @property
    def type(self) -> str:
        """Optimizer type, lower-case (e.g. 'adam')."""
        return str(self.resolved_optimizer["type"]).lower()

    @property
    def params(self) -> dict[str, Any]:
        """Constructor arguments of the optimizer (lr, betas, eps, ...)."""
        return dict(self.resolved_optimizer.get("params", {}))

    @property
    def lr(self) -> float:
        """Peak learning rate (optimizer.params.lr)."""
        return float(self.params.get("lr", DEFAULT_OPTIMIZER["params"]["lr"]))

    @property
    def resolved_optimizer(self) -> dict[str, Any]:
        return self.optimizer if self.optimizer is not None else DEFAULT_OPTIMIZER

    @property
    def resolved_zero(self) -> dict[str, Any]:
        return self.zero_optimization if self.zero_optimization is not None else ZERO_DEFAULTS

    @property
    def zero_stage(self) -> int:
        return int(self.resolved_zero.get("stage", ZERO_DEFAULTS["stage"]))

    @property
    def offload_device(self) -> str:
        """Where ZeRO keeps the optimizer state: 'none', 'cpu' or 'nvme' (offload_optimizer.device)."""
        offload = self.resolved_zero.get("offload_optimizer")
        if isinstance(offload, dict):
            return str(offload.get("device", "none")).lower()
        return "cpu" if offload or self.resolved_zero.get("cpu_offload") else "none"

    @property
    def zero_reduce_scatter(self) -> bool:
        return bool(self.resolved_zero.get("reduce_scatter", ZERO_DEFAULTS["reduce_scatter"]))

    @property
    def zero_contiguous_gradients(self) -> bool:
        return bool(self.resolved_zero.get("contiguous_gradients", ZERO_DEFAULTS["contiguous_gradients"]))

    @property
    def zero_reduce_bucket_size(self) -> int:
        return int(self.resolved_zero.get("reduce_bucket_size", ZERO_DEFAULTS["reduce_bucket_size"]))

    @property
    def zero_allgather_bucket_size(self) -> int:
        return int(self.resolved_zero.get("allgather_bucket_size", ZERO_DEFAULTS["allgather_bucket_size"]))
