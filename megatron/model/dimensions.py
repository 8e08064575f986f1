"""The resolved shape of a model: every size the layers need, derived once from ModelArgs.

GPT-NeoX leaves several sizes implicit (MLP width, KV heads, rotary dims); they are computed here,
in one place, so the layers, the parameter counter and the HF conversion agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.model import FULL_ATTENTION_TYPES, ModelArgs, expand_attention_config
from megatron.neox_arguments.sepllm import SepLLMArgs

GATED_ACTIVATIONS = ("geglu", "swiglu")
ACTIVATIONS = ("gelu", "relu", "softsign", "swish", "mish", "silu") + GATED_ACTIVATIONS
POSITION_EMBEDDINGS = ("learned", "rotary", "sinusoidal", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_vocab_size(vocab_size: int, divisible_by: int, tp_size: int = 1) -> int:
    """The vocabulary size rounded up to a multiple of divisible_by * tp_size (GPT-NeoX's rule)."""
    if vocab_size < 1 or divisible_by < 1 or tp_size < 1:
        raise ValueError(
            f"padded_vocab_size needs positive sizes, got vocab_size={vocab_size}, "
            f"divisible_by={divisible_by}, tp_size={tp_size}"
        )
    return round_up(vocab_size, divisible_by * tp_size)


def mlp_width(args: ModelArgs) -> int:
    """Width of the MLP's inner activation (the input width of dense_4h_to_h), GPT-NeoX's rule.

    intermediate_size (default 4 * hidden_size) is the width of a plain MLP. A gated MLP (SwiGLU,
    GeGLU) keeps about the same parameter count: its fused input projection is int(2/3 of it) wide,
    and each of the gate and value halves is half of that, rounded up to mlp_multiple_of. So
    GPT-NeoX's llama/7B.yml (intermediate_size 32768, mlp_multiple_of 256) gives Llama-7B's 11008.
    """
    size = args.intermediate_size if args.intermediate_size else 4 * args.hidden_size
    multiple = max(int(args.mlp_multiple_of), 1)
    if args.activation in GATED_ACTIVATIONS:
        return round_up(int(size * 2 / 3) // 2, multiple)
    return round_up(size, multiple)


def intermediate_size_for_gated_width(width: int) -> int:
    """An intermediate_size whose gated MLP width (with mlp_multiple_of 1) is exactly `width`."""
    return 3 * width


@dataclass(frozen=True)
class ModelDims:
    """Sizes of one model, resolved from ModelArgs."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dims: int  # 0 when the model has no rotary embedding
    mlp_width: int
    gated_mlp: bool
    vocab_size: int
    max_positions: Optional[int]

    @property
    def qkv_width(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @property
    def heads_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


def resolve_dims(args: ModelArgs, sep: SepLLMArgs, vocab_size: int) -> ModelDims:
    """Check that the model can be built from these settings, and resolve its sizes.

    Every error names the setting to change.
    """
    for name in ("num_layers", "hidden_size", "num_attention_heads"):
        value = getattr(args, name)
        if value is None or int(value) < 1:
            raise ValueError(f"model setting {name} must be a positive integer, got {value!r}")
    if vocab_size is None or int(vocab_size) < 1:
        raise ValueError(f"the model needs a positive (padded) vocabulary size, got {vocab_size!r}")
    hidden, heads = int(args.hidden_size), int(args.num_attention_heads)
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} must be divisible by num_attention_heads {heads}")
    kv_heads = int(args.num_kv_heads) if args.num_kv_heads else heads
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"num_attention_heads {heads} must be a multiple of num_kv_heads {kv_heads}")
    head_dim = hidden // heads

    if args.activation not in ACTIVATIONS:
        raise ValueError(f"activation {args.activation!r} is not supported; choose one of {ACTIVATIONS}")
    if args.norm not in NORMS:
        raise ValueError(f"norm {args.norm!r} is not supported; choose one of {NORMS}")
    if args.pos_emb not in POSITION_EMBEDDINGS:
        raise ValueError(
            f"pos_emb {args.pos_emb!r} is not supported; choose one of {POSITION_EMBEDDINGS}"
        )
    if args.gpt_j_tied and not args.gpt_j_residual:
        raise ValueError("gpt_j_tied only applies with gpt_j_residual: true; set gpt_j_tied: false")
    if args.output_layer_parallelism != "column":
        raise ValueError(
            f"output_layer_parallelism {args.output_layer_parallelism!r} is not supported; use 'column'"
        )
    _check_attention_config(args.attention_config, int(args.num_layers))

    rotary_dims = 0
    if args.pos_emb == "rotary":
        if not 0.0 < float(args.rotary_pct) <= 1.0:
            raise ValueError(f"rotary_pct must be in (0, 1], got {args.rotary_pct}")
        rotary_dims = int(head_dim * float(args.rotary_pct))
        if rotary_dims < 2 or rotary_dims % 2:
            raise ValueError(
                f"rotary_pct {args.rotary_pct} of head size {head_dim} gives {rotary_dims} rotary dims; "
                "it must be a positive even number"
            )

    max_positions = args.max_position_embeddings or args.seq_length
    needs_table = args.pos_emb == "learned" or sep.USE_BiPE
    if needs_table and not max_positions:
        raise ValueError("a learned (or BiPE intra-segment) position table needs max_position_embeddings or seq_length")

    _check_sepllm(sep, args, int(args.num_layers))
    return ModelDims(
        num_layers=int(args.num_layers),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rotary_dims=rotary_dims,
        mlp_width=mlp_width(args),
        gated_mlp=args.activation in GATED_ACTIVATIONS,
        vocab_size=int(vocab_size),
        max_positions=int(max_positions) if max_positions else None,
    )


def _check_attention_config(config, num_layers: int) -> None:
    if config is None:
        return
    types = expand_attention_config(config, num_layers)
    other = sorted({kind for kind in types if kind not in FULL_ATTENTION_TYPES})
    if other:
        raise ValueError(
            f"attention types {other} are not supported; SepLLM layers take their pattern from the "
            f"sepllm settings, so attention_config may only list {FULL_ATTENTION_TYPES}"
        )
    if len(types) != num_layers:
        raise ValueError(f"attention_config describes {len(types)} layers but num_layers is {num_layers}")


def _check_sepllm(sep: SepLLMArgs, args: ModelArgs, num_layers: int) -> None:
    if sep.Layer_num is not None and int(sep.Layer_num) != num_layers:
        raise ValueError(f"sepllm Layer_num {sep.Layer_num} differs from num_layers {num_layers}; make them equal")
    if sep.USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS:
        windows = sep.prefill_loc_win_size_list
        if windows is None or len(windows) != num_layers:
            raise ValueError(
                f"USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS needs prefill_loc_win_size_list with {num_layers} "
                f"entries (one per layer), got {windows!r}"
            )
    if sep.USE_FIXED_SEP_INTERVALs and not sep.USE_ORIGINAL_FULL_ATTEN:
        intervals = sep.fixed_sep_intervals_list
        if intervals is None or len(intervals) != num_layers or any(int(k) < 1 for k in intervals):
            raise ValueError(
                f"USE_FIXED_SEP_INTERVALs needs fixed_sep_intervals_list with {num_layers} positive entries, "
                f"got {intervals!r}"
            )
    if sep.USE_SA_SOFTMAX and sep.USE_SA_SOFTMAX_NO_DENO:
        raise ValueError("set at most one of USE_SA_SOFTMAX and USE_SA_SOFTMAX_NO_DENO")
    if sep.USE_BiPE and args.pos_emb not in ("rotary", "alibi"):
        raise ValueError(f"USE_BiPE needs pos_emb 'rotary' or 'alibi' (the inter-segment encoding), got {args.pos_emb!r}")
