"""MLP activations with GPT-NeoX's names.

`gelu` is the exact (erf) GeLU, which is what HF's hidden_act "gelu" computes. GPT-NeoX's
`bias_gelu_fusion` (on in the Pythia and SepLLM configs) swaps in the tanh approximation; we do not
follow that switch, so one setting means one function and HF exports stay exact. The difference
between the two is below 1e-3 everywhere and does not matter when continuing a checkpoint.
Gated activations (swiglu, geglu) are act(gate) * value, as GPT-NeoX and Llama compute them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "geglu": F.gelu,
    "relu": F.relu,
    "softsign": F.softsign,
    "swish": F.silu,  # GPT-NeoX's swish uses beta = 1, which is SiLU
    "silu": F.silu,
    "swiglu": F.silu,
    "mish": F.mish,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The element-wise function of activation `name` (for gated ones, the function applied to the gate)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]
