"""Self-attention: fused QKV projection, rotary, SepLLM attention, output projection.

Fused QKV layout (the output rows of `query_key_value`), grouped by key/value head:
    for g in range(num_kv_heads):
        [q of heads g*r .. g*r + r - 1 | k of kv head g | v of kv head g],  r = heads / kv heads,
each piece head_dim rows. With r = 1 this is HF GPT-NeoX's per-head [q | k | v]. Tensor
parallelism can cut the rows into contiguous chunks of whole groups (tp must divide num_kv_heads),
and `dense` along its input dimension in the same head order.
"""
from __future__ import annotations

import torch
from torch import nn

from megatron.model.alibi import alibi_bias
from megatron.model.dimensions import ModelDims
from megatron.model.explicit_attention import explicit_attention, self_adjust_variant
from megatron.model.forward_context import ForwardContext
from megatron.model.rotary import apply_rotary
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.attention import sepllm_attention


class SelfAttention(nn.Module):
    def __init__(
        self, args: ModelArgs, sep: SepLLMArgs, dims: ModelDims, layer_idx: int, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        bias = bool(args.use_bias_in_attn_linear)
        self.query_key_value = nn.Linear(dims.hidden_size, dims.qkv_width, bias=bias, device=device, dtype=dtype)
        self.dense = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=bias, device=device, dtype=dtype)
        self.dropout_p = float(args.attention_dropout)
        self.recompile = bool(sep.RECOMPILE_SEP_ATTN_KERNEL)
        self.sa_variant = self_adjust_variant(sep)
        self.sa_numerator_bias = float(sep.SA_Numerator_Bias)
        self.sa_denominator_bias = float(sep.SA_Denominator_Bias)

    def project(self, x: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, L, D] and k, v [B, Hkv, L, D], rotary applied."""
        B, L, _ = x.shape
        r = self.num_heads // self.num_kv_heads
        qkv = self.query_key_value(x).view(B, L, self.num_kv_heads, r + 2, self.head_dim)
        q = qkv[:, :, :, :r].reshape(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, r].transpose(1, 2)
        v = qkv[:, :, :, r + 1].transpose(1, 2)
        if ctx.rope is not None:
            cos, sin = ctx.rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def dense_causal(self, ctx: ForwardContext) -> bool:
        """True when every layer of this pass computes plain causal attention with SDPA."""
        return ctx.alibi is None and self.sa_variant is None and ctx.plan.is_dense_causal

    # Under torch.compile (megatron/parallel/compile.py) this is a boundary between graphs: it reads
    # the per-batch plan and the layer index, which would specialise every graph on the layer. The
    # Sep-Attention kernel (ctx.kernel) never runs here. No effect in eager mode.
    @torch.compiler.disable
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """[B, H, L, D] attention output of this layer under the context's plan."""
        dropout_p = self.dropout_p if self.training else 0.0
        if ctx.use_kernel and not ctx.plan.is_causal(self.layer_idx):  # the masked path must not stand in unsaid
            raise RuntimeError(f"layer {self.layer_idx}: the Sep-Attention kernel runs this pass, but the context was not "
                               "resolved for the layer; pass ctx.for_layer(layer) to the block")
        if ctx.alibi is None and self.sa_variant is None:
            return sepllm_attention(q, k, v, ctx.plan, self.layer_idx, dropout_p=dropout_p, sdpa_backends=ctx.sdpa_backends)
        plan = ctx.plan
        mask = None if plan.is_causal(self.layer_idx) else plan.dense_mask(self.layer_idx)
        bias = alibi_bias(*ctx.alibi) if ctx.alibi is not None else None
        return explicit_attention(
            q, k, v, mask,
            bias=bias,
            sa_variant=self.sa_variant,
            numerator_bias=self.sa_numerator_bias,
            denominator_bias=self.sa_denominator_bias,
            dropout_p=dropout_p,
        )

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.project(x, ctx)
        dropout_p = self.dropout_p if self.training else 0.0
        # Causal SDPA and the kernel (inputs resolved by ForwardContext.for_layer) read neither the
        # layer index nor the plan, so a compiled block traces them: one graph per block.
        if ctx.causal or self.dense_causal(ctx):
            out = sepllm_attention(q, k, v, None, self.layer_idx, dropout_p=dropout_p, sdpa_backends=ctx.sdpa_backends)
        elif ctx.kernel is not None:
            from megatron.sepllm.kernel import sep_attention_layer

            out = sep_attention_layer(q, k, v, ctx.kernel, dropout_p=dropout_p, recompile=self.recompile)
        else:
            out = self.attend(q, k, v, ctx)
        B, H, L, D = out.shape
        return self.dense(out.transpose(1, 2).reshape(B, L, H * D))
