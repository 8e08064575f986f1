"""ModelArgs: the shape of the network (group `model`), with GPT-NeoX's names and defaults."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron.neox_arguments.field import arg

# attention_config types that mean full attention (GPT-NeoX's "global" and "flash"); SepLLM layers take
# their pattern from the sepllm settings, not from attention_config.
FULL_ATTENTION_TYPES = ("global", "flash")


def expand_attention_config(config: list[Any], num_layers: int) -> list[str]:
    """GPT-NeoX's attention_config as one type per layer: [[types, repeat], ...] pairs, where repeat
    may be "all" (the pattern repeated over every layer), or a list that already names each layer."""
    if all(isinstance(item, str) for item in config):
        return list(config)
    types: list[str] = []
    for item in config:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (list, tuple))):
            raise ValueError(f"each entry must be a [[types], repeat] pair like [['global'], {num_layers}], got {item!r}")
        kinds, repeat = item
        if repeat == "all":
            if not kinds or num_layers % len(kinds):
                raise ValueError(f"num_layers {num_layers} is not a multiple of the pattern length {len(kinds)}")
            repeat = num_layers // len(kinds)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise ValueError(f"the repeat count of {item!r} must be a non-negative integer or 'all'")
        types.extend(list(kinds) * repeat)
    return types


INIT_METHOD_CHOICES = ("normal", "scaled_normal", "orthogonal", "scaled_orthogonal", "xavier_uniform", "xavier_normal", "wang_init", "small_init", "single_residual_scaled_normal")


@dataclass
class ModelArgs:
    """Transformer shape (group `model`)."""

    num_layers: Optional[int] = arg(None, "Number of transformer layers.")
    hidden_size: Optional[int] = arg(None, "Width of the residual stream.")
    num_attention_heads: Optional[int] = arg(None, "Number of query heads.")
    num_kv_heads: Optional[int] = arg(None, "Number of key/value heads for grouped-query attention; None means num_attention_heads.")
    intermediate_size: Optional[int] = arg(None, "MLP width as GPT-NeoX defines it (for SwiGLU, the gated width is 2/3 of it, rounded up to mlp_multiple_of); None means 4 * hidden_size.")
    mlp_multiple_of: int = arg(1, "Round the SwiGLU MLP width up to a multiple of this.")
    seq_length: Optional[int] = arg(None, "Training sequence length in tokens.")
    max_position_embeddings: Optional[int] = arg(None, "Largest position the position embedding supports; None means seq_length.")
    pos_emb: str = arg("learned", "Position embedding: learned, rotary, sinusoidal, rpe, alibi or none.", choices=("learned", "rotary", "sinusoidal", "rpe", "alibi", "none"))
    rotary_pct: float = arg(1.0, "Fraction of each head's dimensions that rotary embeddings rotate.")
    rotary_emb_base: int = arg(10000, "Base of the rotary embedding frequencies.")
    rotary_save_freqs_buffer: bool = arg(False, "Save the rotary frequency buffer in checkpoints.")
    norm: str = arg("layernorm", "Normalisation: layernorm or rmsnorm.", choices=("layernorm", "rmsnorm", "scalenorm"))
    layernorm_epsilon: float = arg(1.0e-5, "LayerNorm epsilon.")
    rms_norm_epsilon: float = arg(1.0e-8, "RMSNorm epsilon.")
    use_bias_in_norms: bool = arg(True, "Learn a bias in the norms (LayerNorm only).")
    use_bias_in_attn_linear: bool = arg(True, "Biases in the attention projections.")
    use_bias_in_mlp: bool = arg(True, "Biases in the MLP projections.")
    activation: str = arg("gelu", "MLP activation: gelu, geglu, relu, softsign, swish, mish, silu or swiglu.", choices=("gelu", "geglu", "relu", "softsign", "swish", "mish", "silu", "swiglu"))
    gpt_j_residual: bool = arg(False, "Parallel residual: x + attn(ln1(x)) + mlp(ln2(x)) (Pythia).")
    gpt_j_tied: bool = arg(False, "With gpt_j_residual, one LayerNorm feeds both attention and MLP.")
    no_weight_tying: bool = arg(False, "Untie the input embedding and the output layer.")
    attention_config: Optional[list[Any]] = arg(None, "Per-layer attention types as [[types], repeat] pairs, e.g. [[['global'], 12]]; global and flash mean full attention.")
    init_method: str = arg("normal", "Initialisation of the weights: normal, scaled_normal, orthogonal, scaled_orthogonal, xavier_uniform, xavier_normal, wang_init or small_init.", choices=INIT_METHOD_CHOICES)
    output_layer_init_method: str = arg("scaled_normal", "Initialisation of the output projections of attention and MLP (same choices as init_method).", choices=INIT_METHOD_CHOICES)
    init_method_std: float = arg(0.02, "Standard deviation of normal initialisation.")
    hidden_dropout: float = arg(0.0, "Dropout on the residual branches.")
    attention_dropout: float = arg(0.0, "Dropout on the attention probabilities.")
    make_vocab_size_divisible_by: int = arg(128, "Pad the vocabulary to a multiple of this (times the tensor-parallel size).")
    padded_vocab_size: Optional[int] = arg(None, "Vocabulary size after padding; derived from the tokenizer when None.")
    output_layer_parallelism: str = arg("column", "How the output layer is split across tensor-parallel ranks (only column; no effect without tensor parallelism).", choices=("column", "row"))
    opt_pos_emb_offset: int = arg(0, "Offset of learned position ids (OPT-style models).")
    # GPT-NeoX fused-kernel switches: accepted so GPT-NeoX and SepLLM configs load, not acted on
    # (reasons in not_acted_on.py).
    scaled_upper_triang_masked_softmax_fusion: bool = arg(False, "Fused causal-mask softmax kernel (not acted on).")
    scaled_masked_softmax_fusion: bool = arg(False, "Fused general-mask softmax kernel (not acted on).")
    bias_gelu_fusion: bool = arg(False, "Fused bias + GeLU kernel (not acted on).")
    bias_dropout_fusion: bool = arg(False, "Fused bias + dropout kernel (not acted on).")
    rope_fusion: bool = arg(False, "Fused rotary-embedding kernel (not acted on; must stay false with USE_BiPE, as upstream).")
    layernorm_fusion: bool = arg(False, "Fused LayerNorm kernel (not acted on).")
