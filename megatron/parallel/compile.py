"""Regional torch.compile of a built GPTModel, applied from outside the model (torchtitan style).

    compile_model(model)      # every transformer block and the final norm, in place

Each block is compiled on its own rather than the whole model: the blocks share one graph per
input shape (parameters are graph inputs), so compile time does not grow with depth. What
inductor gains is in the elementwise work between the matrix products: LayerNorm, rotary, GELU,
bias and residual adds become a few fused kernels in forward and backward.

Attention is traced into the block's graph where a fused kernel computes it: causal SDPA (vanilla
models, and a SepLLM pass's full-attention layers) and the Sep-Attention kernel (its torch.library
custom op, opaque with fixed output shapes). Neither reads the layer index: the model's loop
resolves each layer's kernel inputs outside compiled code (`ForwardContext.for_layer`), so blocks
with the same window share one graph and a new batch compiles nothing (dynamo's recompile limit is
raised to the config's distinct windows, and reaching it is an error rather than a silent fall-back
to uncompiled blocks). Any other attention core (masked SDPA, ALiBi, Self-Adjust Softmax:
`SelfAttention.attend`, marked `torch.compiler.disable`) stays outside the graphs: it reads the
per-batch plan and the layer index, and tracing it would specialise every graph on the layer. Such
a block runs as: compiled graph (norms, QKV, rotary) -> attention -> compiled graph (output
projection, MLP, residual).

The language-model loss over the logits is compiled separately (`compiled_lm_loss`, and
`compiled_vocab_parallel_lm_loss` under tensor parallelism): in eager mode its fp32 cast,
log-softmax and their gradients each read and write the whole [tokens x vocabulary] tensor.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from megatron.parallel.loss import lm_loss, vocab_parallel_lm_loss


def compile_model(model: nn.Module, *, backend: str = "inductor", mode: Optional[str] = None) -> None:
    """Compile each transformer block and the final norm of `model` (a GPTModel) in place.

    Shapes are static: a new sequence length or micro-batch size compiles once more, a new batch
    of the same shape (other separators, other documents) never does. `backend` is torch.compile's
    ("aot_eager" traces the same graphs without generating code: tests, debugging); `mode` is its
    mode (the `torch_compile_mode` setting; "reduce-overhead" replays each block from CUDA graphs).
    """
    from megatron.sepllm.mask import prefill_windows

    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"compile_model needs a GPTModel with transformer blocks in .layers, got {type(model).__name__}")
    # The blocks share a graph per window that the Sep-Attention kernel runs with (a constant of
    # the kernel call) plus one for causal layers, each per shape and train/eval mode. Allow that
    # many, and make going past the limit an error: past it dynamo would silently run the blocks
    # uncompiled.
    windows = len(set(prefill_windows(model.context_builder.sep_args, len(layers))))
    _raise_recompile_limit(max(32, 4 * (windows + 1)))
    for block in layers:
        block.compile(dynamic=False, backend=backend, mode=mode)
    model.final_norm.compile(dynamic=False, backend=backend, mode=mode)


def _raise_recompile_limit(limit: int) -> None:
    import torch._dynamo

    config = torch._dynamo.config
    # torch >= 2.7 names; cache_size_limit and accumulated_cache_size_limit are their old aliases
    config.recompile_limit = max(config.recompile_limit, limit)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * limit)
    config.fail_on_recompile_limit_hit = True


@functools.cache
def compiled_lm_loss():
    """`megatron.parallel.loss.lm_loss` under torch.compile (one fused pass over the logits)."""
    return torch.compile(lm_loss, dynamic=False)


@functools.cache
def compiled_vocab_parallel_lm_loss():
    """`megatron.parallel.loss.vocab_parallel_lm_loss` under torch.compile (its collectives over the
    tensor-parallel group are traced into the graph)."""
    return torch.compile(vocab_parallel_lm_loss, dynamic=False)


_OWNED = "_sepllm_grad_owned"  # marks a .grad tensor that own_gradients made


def own_gradients(model: nn.Module, *, copy_all: bool = False) -> None:
    """Give each parameter's `.grad` storage of its own. Call after every micro-batch's backward
    through blocks that compile_model compiled, before gradients are clipped or accumulated.

    Autograd keeps a backward output as a parameter's `.grad` without copying it, and inductor
    returns one buffer as the gradient of two parameters where they are equal: the bf16 -> fp32
    cast of sum(dY) for the attention and MLP output biases of a parallel-residual block under
    autocast. Sharing one `.grad`, the two were clipped twice and took the next micro-batch twice
    (measured on an H100: a 50% error in those biases with accumulation 2); the second one now
    gets a copy. `copy_all` copies every gradient that is not a copy already: with CUDA graphs
    (torch_compile_mode reduce-overhead) all of them live in graph memory that the next replay
    reuses, so within an accumulation window they must be moved out before the next micro-batch
    (later micro-batches then add into the copies in place).
    """
    storages = set()
    for param in model.parameters():
        grad = param.grad
        if grad is None or getattr(grad, _OWNED, False):
            continue
        storage = grad.untyped_storage().data_ptr()
        if copy_all or storage in storages:
            owned = grad.clone()
            setattr(owned, _OWNED, True)
            param.grad = owned
        else:
            storages.add(storage)
