"""Weight initialisation methods, as GPT-NeoX defines them (megatron/model/init_functions.py).

Each `init_method(name, ...)` returns a function that fills a weight tensor in place. Which
weights get which method follows GPT-NeoX: embeddings, QKV, the first MLP projection and the
untied output layer use `init_method`; the attention output and the second MLP projection use
`output_layer_init_method`; biases are zero and norm weights one.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

InitFn = Callable[[torch.Tensor], torch.Tensor]

INIT_METHODS = (
    "normal",
    "scaled_normal",
    "orthogonal",
    "scaled_orthogonal",
    "xavier_uniform",
    "xavier_normal",
    "wang_init",
    "small_init",
)


def _normal(std: float) -> InitFn:
    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)

    return init_


def _orthogonal(gain: float) -> InitFn:
    def init_(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim < 2:
            raise ValueError("orthogonal initialisation needs a tensor with at least 2 dimensions")
        rows = tensor.shape[0]
        cols = tensor.numel() // rows
        # QR runs in fp32 because it is not implemented for half precision.
        flat = torch.randn(rows, cols, device=tensor.device, dtype=torch.float32)
        if rows < cols:
            flat = flat.t()
        q, r = torch.linalg.qr(flat)
        q = q * torch.diagonal(r).sign()  # makes Q uniformly distributed (Mezzadri, math-ph/0609050)
        if rows < cols:
            q = q.t()
        with torch.no_grad():
            tensor.copy_(q.reshape(tensor.shape).to(tensor.dtype)).mul_(gain)
        return tensor

    return init_


def init_method(name: str, *, std: float, num_layers: int, hidden_size: int) -> InitFn:
    """The GPT-NeoX init method `name` for a model with these sizes."""
    if name == "normal":
        return _normal(std)
    if name == "scaled_normal":
        return _normal(std / math.sqrt(2.0 * num_layers))
    if name == "orthogonal":
        return _orthogonal(math.sqrt(2.0))
    if name == "scaled_orthogonal":
        return _orthogonal(math.sqrt(2.0 / num_layers))
    if name == "xavier_uniform":
        return torch.nn.init.xavier_uniform_
    if name == "xavier_normal":
        return torch.nn.init.xavier_normal_
    if name == "wang_init":
        return _normal(2.0 / num_layers / math.sqrt(hidden_size))
    if name == "small_init":
        return _normal(math.sqrt(2.0 / (5.0 * hidden_size)))
    raise ValueError(f"unknown init method {name!r}; choose one of {INIT_METHODS}")
