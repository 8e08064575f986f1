"""Conversion between our model's state dict / config and HF transformers' (pure functions).

arch "neox" maps to GPTNeoXForCausalLM, arch "llama" to LlamaForCausalLM. The tensors are the
same objects or slices/concatenations of them; nothing is rounded, so ours -> HF -> ours is exact.

Our names (megatron.model.GPTModel):
    embedding.word_embeddings.weight, final_norm.*, output_layer.weight (absent when tied),
    layers.{i}.input_layernorm.*, layers.{i}.post_attention_layernorm.*,
    layers.{i}.attention.query_key_value.* (grouped [q.. | k | v] per KV head, see attention.py),
    layers.{i}.attention.dense.*, layers.{i}.mlp.dense_h_to_4h.* (Llama up_proj),
    layers.{i}.mlp.dense_h_to_4h_gate.* (Llama gate_proj), layers.{i}.mlp.dense_4h_to_h.*

Where HF has a tensor we do not (GPT-NeoX LayerNorm/MLP biases when ours are off), export writes
zeros and import accepts only zeros, so no weight is silently dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from megatron.model.dimensions import intermediate_size_for_gated_width, mlp_width
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs

ARCHS = ("neox", "llama")

# Our activation name -> HF hidden_act, for GPT-NeoX-shaped models. "gelu" is the exact erf GeLU
# on both sides (see megatron/model/activations.py).
_NEOX_ACT_TO_HF = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "mish": "mish"}
_HF_ACT_TO_NEOX = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "mish": "mish"}

# HF buffers that are not weights.
_IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")

Tensors = dict[str, torch.Tensor]


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")


def _heads(args: ModelArgs) -> tuple[int, int, int]:
    heads = int(args.num_attention_heads)
    kv = int(args.num_kv_heads) if args.num_kv_heads else heads
    return heads, kv, int(args.hidden_size) // heads


def exportable_problems(args: ModelArgs, arch: str) -> list[str]:
    """Every setting HF's class for `arch` cannot represent (empty when it can)."""
    problems = []
    heads, kv, _ = _heads(args)
    if args.pos_emb != "rotary":
        problems.append(f"pos_emb must be 'rotary' (is {args.pos_emb!r})")
    if arch == "neox":
        if args.norm != "layernorm":
            problems.append(f"norm must be 'layernorm' (is {args.norm!r})")
        if args.activation not in _NEOX_ACT_TO_HF:
            problems.append(f"activation must be one of {sorted(_NEOX_ACT_TO_HF)} (is {args.activation!r})")
        if kv != heads:
            problems.append(f"GPT-NeoX has no grouped-query attention (num_kv_heads {kv} != heads {heads})")
    else:
        if args.norm != "rmsnorm":
            problems.append(f"norm must be 'rmsnorm' (is {args.norm!r})")
        if args.activation != "swiglu":
            problems.append(f"activation must be 'swiglu' (is {args.activation!r})")
        if float(args.rotary_pct) != 1.0:
            problems.append(f"rotary_pct must be 1 (is {args.rotary_pct})")
        if args.gpt_j_residual:
            problems.append("gpt_j_residual must be false")
    return problems


def _check_exportable(args: ModelArgs, arch: str) -> None:
    """Raise, naming every setting HF's class for `arch` cannot represent."""
    problems = exportable_problems(args, arch)
    if problems:
        raise ValueError(f"this model cannot be expressed as HF arch {arch!r}: " + "; ".join(problems))


def _take(sd: Tensors, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{where} state dict has no {key!r}; is the architecture or config right?")
    return sd.pop(key)


def _take_if_zero(sd: Tensors, key: str, why: str) -> None:
    """Remove HF tensor `key`, which our model cannot hold, provided it is all zeros."""
    t = sd.pop(key, None)
    if t is not None and bool(torch.any(t != 0)):
        raise ValueError(f"HF tensor {key!r} is not zero but {why}; change the model config to keep it")


def _split_qkv(qkv: torch.Tensor, heads: int, kv: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our grouped fused QKV rows -> (q, k, v) rows in HF's head order."""
    r = heads // kv
    rest = qkv.shape[1:]
    grouped = qkv.reshape(kv, r + 2, head_dim, *rest)
    # contiguous: safetensors refuses strided views
    q = grouped[:, :r].reshape(heads * head_dim, *rest).contiguous()
    k = grouped[:, r].reshape(kv * head_dim, *rest).contiguous()
    v = grouped[:, r + 1].reshape(kv * head_dim, *rest).contiguous()
    return q, k, v


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv: int, head_dim: int) -> torch.Tensor:
    r = heads // kv
    rest = q.shape[1:]
    parts = (q.reshape(kv, r, head_dim, *rest), k.reshape(kv, 1, head_dim, *rest), v.reshape(kv, 1, head_dim, *rest))
    return torch.cat(parts, dim=1).reshape((heads + 2 * kv) * head_dim, *rest)


def _pop_norm(sd: Tensors, prefix: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    return _take(sd, f"{prefix}.weight", "our"), sd.pop(f"{prefix}.bias", None)


def _put_norm(out: Tensors, prefix: str, norm: tuple[torch.Tensor, Optional[torch.Tensor]], arch: str) -> None:
    weight, bias = norm
    out[f"{prefix}.weight"] = weight
    if arch == "neox":  # HF's LayerNorm always has a bias
        out[f"{prefix}.bias"] = bias if bias is not None else torch.zeros_like(weight)


def to_hf_state_dict(our_sd: Tensors, model_args: ModelArgs, arch: str) -> Tensors:
    """Our GPTModel state dict -> the state dict of HF's GPTNeoXForCausalLM / LlamaForCausalLM.

    Like HF's own state_dict(), a tied model's lm_head.weight is the embedding tensor itself;
    a writer that refuses shared tensors (safetensors.save_file) should leave lm_head.weight out
    when the config has tie_word_embeddings.
    """
    _check_arch(arch)
    _check_exportable(model_args, arch)
    sd = dict(our_sd)
    heads, kv, hd = _heads(model_args)
    base = "gpt_neox" if arch == "neox" else "model"
    out: Tensors = {}
    embed = _take(sd, "embedding.word_embeddings.weight", "our")
    out[f"{base}.{'embed_in' if arch == 'neox' else 'embed_tokens'}.weight"] = embed
    out["lm_head.weight"] = _take(sd, "output_layer.weight", "our") if model_args.no_weight_tying else embed
    _put_norm(out, f"{base}.{'final_layer_norm' if arch == 'neox' else 'norm'}", _pop_norm(sd, "final_norm"), arch)
    for i in range(int(model_args.num_layers)):
        ours, theirs = f"layers.{i}", f"{base}.layers.{i}"
        first = _pop_norm(sd, f"{ours}.input_layernorm")
        # gpt_j_tied: one norm feeds attention and MLP; HF has two, so it is written twice.
        second = _pop_norm(sd, f"{ours}.post_attention_layernorm") if f"{ours}.post_attention_layernorm.weight" in sd else first
        _put_norm(out, f"{theirs}.input_layernorm", first, arch)
        _put_norm(out, f"{theirs}.post_attention_layernorm", second, arch)
        if arch == "neox":
            for name in ("attention.query_key_value", "attention.dense"):
                out[f"{theirs}.{name}.weight"] = _take(sd, f"{ours}.{name}.weight", "our")
                if f"{ours}.{name}.bias" in sd:
                    out[f"{theirs}.{name}.bias"] = sd.pop(f"{ours}.{name}.bias")
            for name in ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
                w = out[f"{theirs}.{name}.weight"] = _take(sd, f"{ours}.{name}.weight", "our")
                b = sd.pop(f"{ours}.{name}.bias", None)
                out[f"{theirs}.{name}.bias"] = b if b is not None else w.new_zeros(w.shape[0])
            continue
        for kind in ("weight", "bias"):
            qkv = sd.pop(f"{ours}.attention.query_key_value.{kind}", None)
            if qkv is not None:
                for proj, t in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(qkv, heads, kv, hd)):
                    out[f"{theirs}.self_attn.{proj}.{kind}"] = t
            for ours_name, hf_name in _LLAMA_LINEARS:
                if f"{ours}.{ours_name}.{kind}" in sd:
                    out[f"{theirs}.{hf_name}.{kind}"] = sd.pop(f"{ours}.{ours_name}.{kind}")
    if sd:
        raise ValueError(f"our state dict has tensors HF arch {arch!r} cannot hold: {sorted(sd)[:8]}")
    return out


_LLAMA_LINEARS = (
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.dense_h_to_4h_gate", "mlp.gate_proj"),
    ("mlp.dense_h_to_4h", "mlp.up_proj"),
    ("mlp.dense_4h_to_h", "mlp.down_proj"),
)


def _import_norm(hf: Tensors, out: Tensors, hf_prefix: str, ours: str, args: ModelArgs) -> None:
    out[f"{ours}.weight"] = _take(hf, f"{hf_prefix}.weight", "HF")
    has_bias = args.norm == "layernorm" and args.use_bias_in_norms
    if has_bias:
        out[f"{ours}.bias"] = _take(hf, f"{hf_prefix}.bias", "HF")
    else:
        _take_if_zero(hf, f"{hf_prefix}.bias", "the model config has no norm biases")


def from_hf_state_dict(hf_sd: Tensors, model_args: ModelArgs, arch: str) -> Tensors:
    """The state dict of HF's GPTNeoXForCausalLM / LlamaForCausalLM -> our GPTModel state dict.

    Accepts both the old (`embed_out`) and current (`lm_head`) name of GPT-NeoX's output layer.
    """
    _check_arch(arch)
    _check_exportable(model_args, arch)
    hf = {k: v for k, v in hf_sd.items() if not k.endswith(_IGNORED_HF_SUFFIXES)}
    if "embed_out.weight" in hf:
        hf["lm_head.weight"] = hf.pop("embed_out.weight")
    heads, kv, hd = _heads(model_args)
    base = "gpt_neox" if arch == "neox" else "model"
    out: Tensors = {}
    embed = _take(hf, f"{base}.{'embed_in' if arch == 'neox' else 'embed_tokens'}.weight", "HF")
    out["embedding.word_embeddings.weight"] = embed
    head = hf.pop("lm_head.weight", None)
    if model_args.no_weight_tying:
        # A tied HF checkpoint may omit lm_head; the untied model then starts from the embedding.
        out["output_layer.weight"] = head if head is not None else embed.clone()
    elif head is not None and head is not embed and not torch.equal(head, embed):
        raise ValueError("HF lm_head differs from the input embedding, but the model config ties them; set no_weight_tying: true")
    _import_norm(hf, out, f"{base}.{'final_layer_norm' if arch == 'neox' else 'norm'}", "final_norm", model_args)
    tied_norms = bool(model_args.gpt_j_residual and model_args.gpt_j_tied)
    for i in range(int(model_args.num_layers)):
        ours, theirs = f"layers.{i}", f"{base}.layers.{i}"
        _import_norm(hf, out, f"{theirs}.input_layernorm", f"{ours}.input_layernorm", model_args)
        if tied_norms:
            second: Tensors = {}
            _import_norm(hf, second, f"{theirs}.post_attention_layernorm", f"{ours}.input_layernorm", model_args)
            if any(not torch.equal(t, out[k]) for k, t in second.items()):
                raise ValueError(f"HF layer {i} has two different norms but the config sets gpt_j_tied; set gpt_j_tied: false")
        else:
            _import_norm(hf, out, f"{theirs}.post_attention_layernorm", f"{ours}.post_attention_layernorm", model_args)
        if arch == "neox":
            for name in ("attention.query_key_value", "attention.dense"):
                out[f"{ours}.{name}.weight"] = _take(hf, f"{theirs}.{name}.weight", "HF")
                _import_bias(hf, out, f"{theirs}.{name}.bias", f"{ours}.{name}.bias", model_args.use_bias_in_attn_linear)
            for name in ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
                out[f"{ours}.{name}.weight"] = _take(hf, f"{theirs}.{name}.weight", "HF")
                _import_bias(hf, out, f"{theirs}.{name}.bias", f"{ours}.{name}.bias", model_args.use_bias_in_mlp)
            continue
        for kind in ("weight", "bias"):
            projs = [hf.pop(f"{theirs}.self_attn.{p}.{kind}", None) for p in ("q_proj", "k_proj", "v_proj")]
            if all(t is not None for t in projs):
                out[f"{ours}.attention.query_key_value.{kind}"] = _fuse_qkv(*projs, heads, kv, hd)
            elif any(t is not None for t in projs):
                raise KeyError(f"HF layer {i} has only some of q_proj/k_proj/v_proj {kind}")
            for ours_name, hf_name in _LLAMA_LINEARS:
                if f"{theirs}.{hf_name}.{kind}" in hf:
                    out[f"{ours}.{ours_name}.{kind}"] = hf.pop(f"{theirs}.{hf_name}.{kind}")
    if hf:
        raise ValueError(f"HF state dict has tensors the {arch!r} mapping does not place: {sorted(hf)[:8]}")
    return out


def _import_bias(hf: Tensors, out: Tensors, hf_key: str, our_key: str, keep: bool) -> None:
    if keep:
        out[our_key] = _take(hf, hf_key, "HF")
    else:
        _take_if_zero(hf, hf_key, "the model config has no bias there")


def _max_positions(args: ModelArgs) -> int:
    return int(args.max_position_embeddings or args.seq_length or 2048)


def hf_config_from_args(model_args: ModelArgs, sep_args: Optional[SepLLMArgs], vocab_size: int, arch: str):
    """The HF config (GPTNeoXConfig or LlamaConfig) of our model; SepLLM settings go under `sepllm`."""
    from transformers import GPTNeoXConfig, LlamaConfig

    _check_arch(arch)
    _check_exportable(model_args, arch)
    heads, kv, hd = _heads(model_args)
    common: dict[str, Any] = dict(
        vocab_size=int(vocab_size),
        hidden_size=int(model_args.hidden_size),
        intermediate_size=mlp_width(model_args),
        num_hidden_layers=int(model_args.num_layers),
        num_attention_heads=heads,
        max_position_embeddings=_max_positions(model_args),
        initializer_range=float(model_args.init_method_std),
        attention_dropout=float(model_args.attention_dropout),
        tie_word_embeddings=not model_args.no_weight_tying,
    )
    if sep_args is not None:
        common["sepllm"] = dataclasses.asdict(sep_args)
    rope = {"rope_type": "default", "rope_theta": float(model_args.rotary_emb_base)}
    if arch == "neox":
        return GPTNeoXConfig(
            **common,
            hidden_act=_NEOX_ACT_TO_HF[model_args.activation],
            hidden_dropout=float(model_args.hidden_dropout),
            layer_norm_eps=float(model_args.layernorm_epsilon),
            use_parallel_residual=bool(model_args.gpt_j_residual),
            attention_bias=bool(model_args.use_bias_in_attn_linear),
            rope_parameters={**rope, "partial_rotary_factor": float(model_args.rotary_pct)},
        )
    return LlamaConfig(
        **common,
        num_key_value_heads=kv,
        head_dim=hd,
        hidden_act="silu",
        rms_norm_eps=float(model_args.rms_norm_epsilon),
        attention_bias=bool(model_args.use_bias_in_attn_linear),
        mlp_bias=bool(model_args.use_bias_in_mlp),
        rope_parameters=rope,
    )


def _rope(hf_config) -> tuple[float, float]:
    """(theta, partial_rotary_factor) of an HF config with plain RoPE."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"HF rope_type {kind!r} (RoPE scaling) is not supported; only plain RoPE is")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", getattr(hf_config, "rotary_emb_base", 10000.0)))
    pct = params.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", 1.0))
    return float(theta), float(pct)


def _int_if_whole(x: float):
    return int(x) if float(x).is_integer() else x


def model_args_from_hf_config(hf_config) -> ModelArgs:
    """ModelArgs of a GPT-NeoX (Pythia) or Llama (Llama, SmolLM2) HF config.

    The vocabulary is taken as already padded (make_vocab_size_divisible_by 1). A Llama MLP width
    W is expressed as intermediate_size 3 * W with mlp_multiple_of 1, which GPT-NeoX's gated-MLP
    rule maps back to exactly W. seq_length is set to max_position_embeddings.
    """
    kind = getattr(hf_config, "model_type", None)
    theta, pct = _rope(hf_config)
    positions = int(hf_config.max_position_embeddings)
    common: dict[str, Any] = dict(
        num_layers=int(hf_config.num_hidden_layers),
        hidden_size=int(hf_config.hidden_size),
        num_attention_heads=int(hf_config.num_attention_heads),
        seq_length=positions,
        max_position_embeddings=positions,
        pos_emb="rotary",
        rotary_emb_base=_int_if_whole(theta),
        no_weight_tying=not bool(getattr(hf_config, "tie_word_embeddings", False)),
        init_method_std=float(getattr(hf_config, "initializer_range", 0.02)),
        attention_dropout=float(getattr(hf_config, "attention_dropout", 0.0) or 0.0),
        make_vocab_size_divisible_by=1,
        padded_vocab_size=int(hf_config.vocab_size),
    )
    if kind == "gpt_neox":
        act = hf_config.hidden_act
        if act not in _HF_ACT_TO_NEOX:
            raise ValueError(f"HF hidden_act {act!r} is not supported; use one of {sorted(_HF_ACT_TO_NEOX)}")
        return ModelArgs(
            **common,
            intermediate_size=int(hf_config.intermediate_size),
            rotary_pct=pct,
            norm="layernorm",
            layernorm_epsilon=float(hf_config.layer_norm_eps),
            use_bias_in_norms=True,
            use_bias_in_attn_linear=bool(getattr(hf_config, "attention_bias", True)),
            use_bias_in_mlp=True,
            activation=_HF_ACT_TO_NEOX[act],
            gpt_j_residual=bool(hf_config.use_parallel_residual),
            hidden_dropout=float(getattr(hf_config, "hidden_dropout", 0.0) or 0.0),
        )
    if kind == "llama":
        if hf_config.hidden_act != "silu":
            raise ValueError(f"Llama hidden_act {hf_config.hidden_act!r} is not supported; only silu (SwiGLU) is")
        head_dim = getattr(hf_config, "head_dim", None)
        if head_dim and int(head_dim) * int(hf_config.num_attention_heads) != int(hf_config.hidden_size):
            raise ValueError(f"Llama head_dim {head_dim} x heads must equal hidden_size {hf_config.hidden_size}")
        if pct != 1.0:
            raise ValueError(f"Llama partial_rotary_factor {pct} is not supported; only full rotary is")
        return ModelArgs(
            **common,
            num_kv_heads=int(getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads),
            intermediate_size=intermediate_size_for_gated_width(int(hf_config.intermediate_size)),
            mlp_multiple_of=1,
            rotary_pct=1.0,
            norm="rmsnorm",
            rms_norm_epsilon=float(hf_config.rms_norm_eps),
            use_bias_in_norms=False,
            use_bias_in_attn_linear=bool(getattr(hf_config, "attention_bias", False)),
            use_bias_in_mlp=bool(getattr(hf_config, "mlp_bias", False)),
            activation="swiglu",
            gpt_j_residual=False,
        )
    raise ValueError(f"HF model_type {kind!r} is not supported; only 'gpt_neox' and 'llama' are")


def sep_args_from_hf_config(hf_config) -> Optional[SepLLMArgs]:
    """The SepLLMArgs stored under the config's `sepllm` key by hf_config_from_args, or None."""
    stored = getattr(hf_config, "sepllm", None)
    if stored is None:
        return None
    known = {f.name for f in dataclasses.fields(SepLLMArgs)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"HF config sepllm has unknown settings {unknown}")
    return SepLLMArgs(**stored)
