"""Model shapes, parameter counts, initialisation, activation checkpointing and config errors."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from megatron.model import GPTModel, count_parameters, mlp_width, padded_vocab_size
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.sepllm import SepLLMArgs

SEP = SepLLMArgs(prefill_local_window_size=8, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)


def _pythia(layers: int, hidden: int, heads: int) -> ModelArgs:
    return ModelArgs(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, seq_length=2048,
                     max_position_embeddings=2048, pos_emb="rotary", rotary_pct=0.25, gpt_j_residual=True,
                     no_weight_tying=True, init_method="small_init", output_layer_init_method="wang_init")


def _llama_7b() -> ModelArgs:  # GPT-NeoX's configs/llama/7B.yml
    return ModelArgs(num_layers=32, hidden_size=4096, num_attention_heads=32, intermediate_size=32768,
                     mlp_multiple_of=256, seq_length=2048, pos_emb="rotary", rotary_pct=1, no_weight_tying=True,
                     norm="rmsnorm", rms_norm_epsilon=1e-6, use_bias_in_mlp=False, use_bias_in_norms=False,
                     use_bias_in_attn_linear=False, activation="swiglu", make_vocab_size_divisible_by=1)


def _hf_count(model_cls, config) -> int:
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_padded_vocab_size():
    assert padded_vocab_size(50277, 128) == 50304  # Pythia
    assert padded_vocab_size(50277, 128, tp_size=2) == 50432
    assert padded_vocab_size(50304, 128) == 50304
    assert padded_vocab_size(32000, 1) == 32000
    with pytest.raises(ValueError, match="positive"):
        padded_vocab_size(100, 0)


def test_mlp_width_follows_gpt_neox():
    assert mlp_width(_llama_7b()) == 11008
    assert mlp_width(dataclasses.replace(_llama_7b(), intermediate_size=None)) == 5632  # 4h, gated, rounded
    assert mlp_width(_pythia(12, 768, 12)) == 3072
    assert mlp_width(dataclasses.replace(_pythia(12, 768, 12), intermediate_size=1000, mlp_multiple_of=64)) == 1024


PYTHIA = [  # (layers, hidden, heads, vocab, published parameter count incl. embeddings)
    (12, 768, 12, 50304, 162_322_944),
    (24, 1024, 16, 50304, 405_334_016),
    (24, 2048, 16, 50304, 1_414_647_808),
    (36, 5120, 40, 50688, 11_846_072_320),
]


@pytest.mark.parametrize("layers,hidden,heads,vocab,expected", PYTHIA, ids=["160M", "410M", "1.4B", "12B"])
def test_pythia_parameter_counts_on_meta(layers, hidden, heads, vocab, expected):
    model = GPTModel(_pythia(layers, hidden, heads), SEP, vocab, device="meta")
    assert count_parameters(model) == expected
    hf = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, rotary_pct=0.25, tie_word_embeddings=False)
    assert _hf_count(GPTNeoXForCausalLM, hf) == expected


def test_llama_7b_and_smollm2_parameter_counts_on_meta():
    model = GPTModel(_llama_7b(), SEP, 32000, device="meta")
    assert count_parameters(model) == 6_738_415_616
    hf = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32)
    assert _hf_count(LlamaForCausalLM, hf) == 6_738_415_616
    smol = ModelArgs(num_layers=30, hidden_size=576, num_attention_heads=9, num_kv_heads=3, intermediate_size=3 * 1536,
                     seq_length=2048, pos_emb="rotary", norm="rmsnorm", activation="swiglu", use_bias_in_norms=False,
                     use_bias_in_attn_linear=False, use_bias_in_mlp=False)
    tied = GPTModel(smol, SEP, 49152, device="meta")
    hf_smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    assert count_parameters(tied) == _hf_count(LlamaForCausalLM, hf_smol) == 134_515_008
    assert count_parameters(tied, exclude_embeddings=True) == 134_515_008 - 49152 * 576


def _shared() -> Path:
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "shared", here / "shared"):
        if candidate.is_dir():
            return candidate
    pytest.skip("../shared (upstream configs) is not available")


def _model_args_from_yaml(path: Path) -> ModelArgs:
    raw = yaml.safe_load(path.read_text())
    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    return ModelArgs(**{k.replace("-", "_"): v for k, v in raw.items() if k.replace("-", "_") in fields})


@pytest.mark.parametrize("name,vocab,expected", [
    ("pythia/160M.yml", 50304, 162_322_944),
    ("pythia/1-4B.yml", 50304, 1_414_647_808),
    ("llama/7B.yml", 32000, 6_738_415_616),
])
def test_upstream_gpt_neox_configs_build_with_the_published_counts(name, vocab, expected):
    args = _model_args_from_yaml(_shared() / "upstream" / "gpt-neox-configs" / name)
    model = GPTModel(args, SEP, vocab, device="meta")
    assert count_parameters(model) == expected


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std())


@pytest.mark.parametrize("init,out_init", [("normal", "scaled_normal"), ("small_init", "wang_init"),
                                           ("xavier_normal", "xavier_uniform")])
def test_init_methods_give_gpt_neox_standard_deviations(init, out_init):
    L, h = 4, 256
    args = ModelArgs(num_layers=L, hidden_size=h, num_attention_heads=4, seq_length=64, pos_emb="learned",
                     init_method=init, output_layer_init_method=out_init, init_method_std=0.02,
                     no_weight_tying=True)
    torch.manual_seed(0)
    model = GPTModel(args, SEP, 1024)
    expected = {
        "normal": lambda fi, fo: 0.02,
        "scaled_normal": lambda fi, fo: 0.02 / math.sqrt(2 * L),
        "small_init": lambda fi, fo: math.sqrt(2 / (5 * h)),
        "wang_init": lambda fi, fo: 2 / L / math.sqrt(h),
        "xavier_normal": lambda fi, fo: math.sqrt(2 / (fi + fo)),
        "xavier_uniform": lambda fi, fo: math.sqrt(2 / (fi + fo)),
    }
    block = model.layers[1]
    for weight, method in [
        (model.embedding.word_embeddings.weight, init),
        (model.embedding.position_embeddings.weight, init),
        (block.attention.query_key_value.weight, init),
        (block.mlp.dense_h_to_4h.weight, init),
        (model.output_layer.weight, init),
        (block.attention.dense.weight, out_init),
        (block.mlp.dense_4h_to_h.weight, out_init),
    ]:
        fan_out, fan_in = weight.shape
        assert _std(weight) == pytest.approx(expected[method](fan_in, fan_out), rel=0.03), method
    assert all(not p.detach().any() for n, p in model.named_parameters() if n.endswith("bias") and "norm" not in n)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "norm" in n and n.endswith("weight"))


@pytest.mark.parametrize("name,gain2", [("orthogonal", 2.0), ("scaled_orthogonal", 0.5)])
def test_orthogonal_init(name, gain2):
    args = ModelArgs(num_layers=4, hidden_size=64, num_attention_heads=4, seq_length=16, pos_emb="rotary",
                     init_method=name, output_layer_init_method=name)
    model = GPTModel(args, SEP, 128)
    w = model.layers[0].attention.query_key_value.weight  # 192 x 64: orthonormal columns
    torch.testing.assert_close(w.T @ w, gain2 * torch.eye(64), rtol=0, atol=1e-4)
    d = model.layers[0].attention.dense.weight
    torch.testing.assert_close(d @ d.T, gain2 * torch.eye(64), rtol=0, atol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients_and_recomputes():
    args = ModelArgs(num_layers=4, hidden_size=32, num_attention_heads=4, seq_length=32, pos_emb="rotary",
                     hidden_dropout=0.1, attention_dropout=0.1, gpt_j_residual=True)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))

    def step(chunk: int):
        torch.manual_seed(0)
        model = GPTModel(args, SEP, 64).train()
        model.enable_activation_checkpointing(chunk)
        calls = []
        for block in model.layers:
            block.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(1)
        # Without early stop, recomputation runs every block to its end, so the hooks count it.
        with torch.utils.checkpoint.set_checkpoint_early_stop(False):
            loss = F.cross_entropy(model(ids)[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
            loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, len(calls)

    loss0, grads0, calls0 = step(0)
    loss2, grads2, calls2 = step(2)
    assert calls0 == 4 and calls2 == 8  # every block ran again in backward
    torch.testing.assert_close(loss2, loss0, rtol=0, atol=0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads2[name], g, rtol=0, atol=1e-6)


def test_tied_embeddings_share_one_weight():
    args = ModelArgs(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary")
    model = GPTModel(args, SEP, 64)
    assert model.tied_embeddings and "output_layer.weight" not in model.state_dict()
    untied = GPTModel(dataclasses.replace(args, no_weight_tying=True), SEP, 64)
    assert count_parameters(untied) - count_parameters(model) == 64 * 32
    logits = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, 64) and logits.dtype == torch.float32


def test_bfloat16_parameters_give_bfloat16_logits():
    args = ModelArgs(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary")
    model = GPTModel(args, SEP, 64, dtype=torch.bfloat16)
    assert model(torch.zeros(1, 12, dtype=torch.long)).dtype == torch.bfloat16


def test_stages_are_the_flat_pipeline_order():
    args = ModelArgs(num_layers=3, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary")
    model = GPTModel(args, SEP, 64)
    stages = model.stages()
    assert stages[0] is model.embedding and stages[-1] is model.output_layer and stages[-2] is model.final_norm
    assert stages[1:4] == list(model.layers)


BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, pos_emb="rotary")


@pytest.mark.parametrize("model_overrides,sep_overrides,message", [
    (dict(hidden_size=30), {}, "divisible by num_attention_heads"),
    (dict(num_kv_heads=3), {}, "multiple of num_kv_heads"),
    (dict(activation="gelu_fast"), {}, "activation 'gelu_fast'"),
    (dict(pos_emb="rpe"), {}, "pos_emb 'rpe'"),
    (dict(num_layers=None), {}, "num_layers"),
    (dict(attention_config=[[["local"], 2]]), {}, r"attention types \['local'\]"),
    (dict(attention_config=[[["global"], 3]]), {}, "describes 3 layers"),
    (dict(gpt_j_tied=True), {}, "gpt_j_tied"),
    (dict(pos_emb="learned", seq_length=None), {}, "max_position_embeddings"),
    ({}, dict(Layer_num=5), "Layer_num 5"),
    ({}, dict(USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[4]), "2 entries"),
    ({}, dict(USE_FIXED_SEP_INTERVALs=True, fixed_sep_intervals_list=None), "fixed_sep_intervals_list"),
])
def test_bad_settings_are_refused_with_the_setting_named(model_overrides, sep_overrides, message):
    args = ModelArgs(**{**BASE, **model_overrides})
    with pytest.raises(ValueError, match=message):
        GPTModel(args, dataclasses.replace(SEP, **sep_overrides), 64, device="meta")


@pytest.mark.parametrize("config", [[[["global"], 2]], [[["flash", "global"], "all"]], [[["global"], "all"]],
                                    ["global", "flash"]])
def test_every_attention_config_form_gpt_neox_writes_builds(config):
    # [[types], repeat] pairs, repeat "all", and one type per layer (what validation accepts, the model builds)
    GPTModel(ModelArgs(**{**BASE, "attention_config": config}), SEP, 64, device="meta")


def test_bad_inputs_are_refused():
    args = ModelArgs(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=8, pos_emb="learned")
    model = GPTModel(args, SEP, 64)
    with pytest.raises(ValueError, match="position table"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="doc_ids must have the shape"):
        model(torch.zeros(1, 4, dtype=torch.long), doc_ids=torch.zeros(1, 3, dtype=torch.long))
