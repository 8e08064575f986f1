"""What every layer of one forward pass shares, built once from the small per-token tensors.

A `ForwardContext` holds the SepLLM attention plan, the rotary cos/sin and the ALiBi positions of
one micro-batch. `ContextBuilder` makes it from (input_ids, position_ids, doc_ids, key_valid) and
keeps the last one, so that blocks running on their own (a pipeline stage, or recomputation under
activation checkpointing) get the same context without rebuilding it: the cache is keyed on the
identity and version of the input tensors, which it holds on to, so an id cannot be reused.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from megatron.model.alibi import alibi_slopes
from megatron.model.bipe import bilevel_position_ids
from megatron.model.dimensions import ModelDims
from megatron.model.explicit_attention import self_adjust_variant
from megatron.model.rotary import rotary_cos_sin
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.attention import causal_backends
from megatron.sepllm.mask import AttentionPlan, build_attention_plan, resolve_token_ids


@dataclass
class ForwardContext:
    plan: AttentionPlan
    position_ids: torch.Tensor  # [B, L] positions of the absolute embeddings (BiPE: intra-segment)
    rope: Optional[tuple[torch.Tensor, torch.Tensor]]  # cos, sin [B, 1, L, rotary_dims], fp32
    alibi: Optional[tuple[torch.Tensor, torch.Tensor]]  # positions [B, L] whose differences ALiBi penalises, slopes [H]
    use_kernel: bool = False  # the Sep-Attention kernel runs this pass's SepLLM layers
    causal: bool = False  # this layer computes plain causal attention (set by for_layer)
    kernel: Any = None  # this layer's megatron.sepllm.kernel.LayerKernel (set by for_layer)
    sdpa_backends: Optional[tuple] = None  # causal SDPA's backends in priority order (megatron.sepllm.attention.causal_backends)
    _layers: dict = field(default_factory=dict, repr=False)

    def for_layer(self, layer: int) -> "ForwardContext":
        """The context block `layer` reads: with its kernel inputs, or marked causal, where the kernel runs the pass.

        Resolved outside compiled code (the model's loop over blocks), so that a compiled block
        never reads its layer index: blocks with the same window share one graph, with the kernel
        call (or causal SDPA) inside it (megatron/parallel/compile.py). Cached per layer.
        """
        if not self.use_kernel:
            return self
        if layer not in self._layers:
            if self.plan.is_causal(layer):
                self._layers[layer] = replace(self, causal=True, _layers={})
            else:
                from megatron.sepllm.kernel import layer_kernel

                spec = layer_kernel(self.plan, layer, self.position_ids.device)
                self._layers[layer] = replace(self, kernel=spec, _layers={})
        return self._layers[layer]


def _key(tensors: tuple[Optional[torch.Tensor], ...]) -> Optional[tuple]:
    """Version counters of the inputs (None when one cannot tell in-place changes: inference tensors)."""
    if any(t is not None and t.is_inference() for t in tensors):
        return None
    return tuple(None if t is None else (t._version, t.shape) for t in tensors)


class ContextBuilder:
    """Builds (and caches the last) ForwardContext for one model's settings."""

    def __init__(self, model_args: ModelArgs, sep_args: SepLLMArgs, dims: ModelDims) -> None:
        self.sep_args = sep_args
        self.num_layers = dims.num_layers
        self.pos_emb = model_args.pos_emb
        self.rotary_dims = dims.rotary_dims
        # fp32 slopes, kept apart from the parameters so that casting the model to bf16 leaves them exact.
        self.alibi_slopes = alibi_slopes(dims.num_heads) if model_args.pos_emb == "alibi" else None
        self.rotary_base = float(model_args.rotary_emb_base)
        self.bipe_seps = resolve_token_ids(sep_args.BiPE_seps) if sep_args.USE_BiPE else None
        self._inputs: tuple = ()
        self._key: Optional[tuple] = None
        self._context: Optional[ForwardContext] = None

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
    ) -> ForwardContext:
        inputs = (input_ids, position_ids, doc_ids, key_valid)
        key = _key(inputs)
        if (
            key is not None
            and key == self._key
            and self._context is not None
            and all(a is b for a, b in zip(inputs, self._inputs))
            and self._context.sdpa_backends == causal_backends(input_ids.device)  # no new sdpa_kernel pin
        ):
            return self._context
        context = self.build(input_ids, position_ids, doc_ids, key_valid)
        self._inputs, self._key, self._context = inputs, key, context
        return context

    def clear(self) -> None:
        """Drop the cached context (and the dense masks it may hold)."""
        self._inputs, self._key, self._context = (), None, None

    def build(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        doc_ids: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
    ) -> ForwardContext:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        for name, t in (("position_ids", position_ids), ("doc_ids", doc_ids), ("key_valid", key_valid)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")
        with torch.no_grad():
            plan = build_attention_plan(input_ids, self.sep_args, self.num_layers, doc_ids=doc_ids, key_valid=key_valid)
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            # BiPE: absolute embeddings count inside a segment, rotary/ALiBi count segments.
            relative_positions = position_ids
            if self.bipe_seps is not None:  # restarting where the token positions restart (reset_position_ids)
                position_ids, relative_positions = bilevel_position_ids(input_ids, self.bipe_seps, position_ids == 0)
            rope = None
            if self.pos_emb == "rotary":
                rope = rotary_cos_sin(relative_positions, self.rotary_dims, self.rotary_base)
            alibi = None
            if self.alibi_slopes is not None:
                slopes = torch.tensor(self.alibi_slopes, dtype=torch.float32, device=input_ids.device)
                alibi = (relative_positions, slopes)
        use_kernel = (bool(self.sep_args.USE_SEP_ATTN_KERNEL_ACCELERATOR) and input_ids.is_cuda and alibi is None
                      and self_adjust_variant(self.sep_args) is None and not plan.is_dense_causal)
        return ForwardContext(plan, position_ids, rope, alibi, use_kernel, sdpa_backends=causal_backends(input_ids.device))
