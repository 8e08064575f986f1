"""Optimizer construction: parameter groups without weight decay on norms and biases."""
from __future__ import annotations

from typing import Any, Optional

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices with weight decay; biases, norm weights and other 1-d tensors without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, optimizer_cfg: dict, weight_decay: float,
                    device: Optional[torch.device] = None, offload: bool = False) -> torch.optim.Optimizer:
    """`optimizer_cfg` is GPT-NeoX's {"type": "Adam", "params": {"lr": ..., "betas": ..., "eps": ...}}.

    GPT-NeoX's "Adam" applies decoupled weight decay (it maps to AdamW), so both names build AdamW;
    "SGD" is torch's, with weight decay as an L2 term per parameter group, as GPT-NeoX builds it.
    `device` is where the parameters will train (default: where they are now). On CUDA the AdamW
    is the fused one: a model built on the CPU and moved by DeepSpeed afterwards would otherwise
    step with torch's default multi-tensor AdamW, 4.9 against 1.8 ms of GPU time per step for
    Pythia-160M on an H100 (benchmarks/RESULTS.md). With `offload` (ZeRO-Offload: the optimizer
    state lives in CPU memory) Adam is DeepSpeed's CPU Adam, which DeepSpeed steps on the host; its
    C++ op compiles on first use (about a minute, then cached).
    """
    kind = str(optimizer_cfg.get("type", "Adam")).lower()
    params = dict(optimizer_cfg.get("params", {}))
    params.pop("weight_decay", None)  # weight decay is set per parameter group
    groups = param_groups(model, weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=params.pop("lr", 1e-3), **params)
    if kind not in ("adam", "adamw"):  # validation refuses other types before anything is built
        raise ValueError(f"optimizer type {optimizer_cfg.get('type')!r} is not supported; use Adam, AdamW or SGD")
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        params.pop("amsgrad", None)  # validation refuses amsgrad with offload
        return DeepSpeedCPUAdam(groups, lr=params.pop("lr", 1e-4), adamw_mode=True, **params)
    on_cuda = device.type == "cuda" if device is not None else next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=params.pop("lr", 1e-4), fused=on_cuda or None, **params)
