"""Training-free SepLLM on transformers models: mask mode, SepCache, configs and errors."""
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from megatron.sepllm.hf import SepCache, apply_sepllm, build_sepllm_args, remove_sepllm
from megatron.sepllm.reference import reference_keep_mask

SEPS = [3, 4, 5]
VOCAB = 40


def _shared() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    for cand in (root.parent / "shared", root / "shared"):
        if cand.is_dir():
            return cand
    return None


def tiny_llama(layers=2, seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def tiny_neox(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=2, rotary_pct=0.25, max_position_embeddings=1024, attn_implementation="sdpa")
    return GPTNeoXForCausalLM(cfg).eval()


def tiny_qwen2(layers=2, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).eval()


def tiny_mistral(layers=2, seed=0):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        sliding_window=None, attn_implementation="sdpa")
    return MistralForCausalLM(cfg).eval()


MODELS = {"llama": tiny_llama, "gpt_neox": tiny_neox, "qwen2": tiny_qwen2, "mistral": tiny_mistral}


def _ids(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (B, L), generator=g)


def test_every_upstream_trainingfree_yaml_loads():
    shared = _shared()
    if shared is None:
        pytest.skip("../shared (upstream configs) is absent")
    files = sorted((shared / "upstream" / "sepllm-trainingfree-configs").glob("*.yml"))
    assert files
    for f in files:
        args, given = build_sepllm_args(f, layers=32)
        assert "separator_token_ids" in given and args.Layer_num == 32


def test_settings_are_typed_as_in_training_configs():
    # a quoted flag, from YAML or from lm-eval's sepllm_X=no, must not read as a truthy string
    for key, value, expected in (("USE_ORIGINAL_FULL_ATTEN", "no", "true or false"), ("streamingLLM", "False", "true or false"),
                                 ("separator_token_ids", 13, "a list of integers"), ("prefill_local_window_size", "64", "an integer")):
        with pytest.raises(ValueError, match=f"SepLLM setting {key} must be {expected}"):
            build_sepllm_args({key: value})
    args, _ = build_sepllm_args({"prefill_local_window_size": 64.0, "USE_ORIGINAL_FULL_ATTEN": False})
    assert args.prefill_local_window_size == 64 and isinstance(args.prefill_local_window_size, int)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("mode", ["sepllm", "streamingllm", "fixllm"])
def test_mask_mode_equals_forward_with_reference_mask(family, mode):
    model = MODELS[family]()
    ids = _ids(2, 23)
    ids[:, ::4] = 3  # plenty of separators
    am = torch.ones_like(ids)
    am[1, :5] = 0  # left padding
    kw = dict(prefill_local_window_size=4, init_tok_max_idx=1, BATCH_ADAPTIVE_INIT_POS=True)
    rt = apply_sepllm(model, mode=mode, separator_token_ids=SEPS, fixed_interval=3 if mode == "fixllm" else None, **kw)
    with torch.no_grad():
        got = model(ids, attention_mask=am).logits
    remove_sepllm(model)
    ref_mode = {"sepllm": "sepllm", "streamingllm": "streaming", "fixllm": "fixllm"}[mode]
    ref = torch.tensor(reference_keep_mask(ids.tolist(), mode=ref_mode, window=4, init_tok_max_idx=1, separator_ids=SEPS,
                                           fixed_interval=3, key_valid=am.bool().tolist()))
    # The reference counts initial tokens from the row start; redo row 1 from its first real token.
    ref[1, 5:, 5:] = torch.tensor(reference_keep_mask([ids[1, 5:].tolist()], mode=ref_mode, window=4, init_tok_max_idx=1,
                                                      separator_ids=SEPS, fixed_interval=3))[0]
    with torch.no_grad():
        want = model(ids, attention_mask=ref[:, None]).logits
    real = am.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-5)
    assert 0 < rt.kv_report()["kv_ratio"] < 1


def test_mask_mode_decoding_uses_generate_window_and_reports_ratio():
    model = tiny_llama()
    ids = _ids(1, 30)
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=8, do_sample=False)
    rt = apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=2048, generate_local_window_size=2048)
    with torch.no_grad():
        same = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(same, full) and rt.kv_report()["kv_ratio"] == 1.0
    rt = apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=2048, generate_local_window_size=6, init_tok_max_idx=0)
    with torch.no_grad():
        seq = model.generate(ids, max_new_tokens=8, do_sample=False)[:, :-1]
    # The last decoding step's query sees: token 0, the separators, and the last 6 positions.
    T = seq.shape[1]
    kept = {0} | {j for j in range(T) if int(seq[0, j]) in SEPS} | set(range(T - 6, T))
    assert rt.kv_report()["kv_ratio"] == pytest.approx(len(kept) / T)


def test_eager_and_sdpa_bases_agree():
    ids = _ids(2, 20)
    outs = []
    for attn in ("sdpa", "eager"):
        model = tiny_llama(attn=attn)
        apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=3)
        with torch.no_grad():
            outs.append(model(ids).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_sepcache_above_capacity_equals_vanilla_generation(family):
    model = MODELS[family]()
    ids = _ids(2, 9, seed=1)
    am = torch.ones_like(ids)
    am[0, :3] = 0
    with torch.no_grad():
        want = model.generate(ids, attention_mask=am, max_new_tokens=25, do_sample=False)
    apply_sepllm(model, separator_token_ids=SEPS)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=am, max_new_tokens=25, do_sample=False, past_key_values=SepCache(2, 4, 8, 100))
    assert torch.equal(got, want)


def test_sepcache_decoding_step_builds_one_mask_and_reads_nothing_back():
    """Per decoding step the SepLLM mask is built once for all layers, and nothing is read back to the
    host (no CUDA sync) while the cache cannot compress: the costs a GPU step pays per layer/per sync."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func._schema.name.split("::")[-1])
            return func(*args, **(kwargs or {}))

    model = tiny_llama(layers=3)
    apply_sepllm(model, separator_token_ids=SEPS)
    cache = SepCache(2, 4, 8, 40)
    with torch.no_grad():
        nxt = model(_ids(2, 12), past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(20):  # 12 + 20 entries < c = 40: no compression
            with Ops() as ops:
                nxt = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            assert ops.names.count("masked_fill") == 1
            assert not {"_local_scalar_dense", "nonzero", "masked_select"} & set(ops.names)


@pytest.mark.parametrize("pos_shift", [False, True])
@pytest.mark.parametrize("sample", [False, True])
def test_sepcache_never_holds_more_than_capacity(pos_shift, sample):
    model = tiny_neox()
    apply_sepllm(model, separator_token_ids=SEPS)
    cache = SepCache(2, 3, 6, 16, pos_shift=pos_shift)
    ids = _ids(2, 30, seed=2)  # a prefill longer than the capacity is compressed too
    held = []

    def spy(module, args, kwargs, out):
        held.append(max(cache.core.held(layer) for layer in range(2)))

    hook = model.register_forward_hook(spy, with_kwargs=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=sample, top_k=5,
                             past_key_values=cache)
    hook.remove()
    assert out.shape == (2, 70) and len(held) == 40
    assert max(held) <= 16
    assert cache.core.layout.seen.tolist() == [69, 69]


def test_streaming_logits_equal_full_forward_before_first_compression():
    model = tiny_llama()
    apply_sepllm(model, separator_token_ids=SEPS)
    ids = _ids(1, 15)
    with torch.no_grad():
        cache = SepCache(2, 3, 6, 16, pos_shift=True)
        steps = torch.cat([model(ids[:, t:t + 1], past_key_values=cache).logits for t in range(15)], 1)
        remove_sepllm(model)
        full = model(ids).logits
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


def test_shifted_logits_equal_full_forward_over_kept_tokens_at_cache_positions():
    """One layer: cached K/V depend only on the token and its position, so after evictions the next
    token's logits equal a plain forward over the kept tokens placed at positions 0..n."""
    model = tiny_llama(layers=1)
    apply_sepllm(model, separator_token_ids=SEPS)
    ids = _ids(1, 40, seed=3)
    ids[0, 7::5] = 4
    cache = SepCache(2, 3, 6, 16, pos_shift=True)
    with torch.no_grad():
        for t in range(39):
            model(ids[:, t:t + 1], past_key_values=cache)
        kept = cache.core.kept_orig_positions(0)
        assert len(kept) < 39
        got = model(ids[:, 39:40], past_key_values=cache).logits[0, -1]
        remove_sepllm(model)
        seq = ids[:, kept + [39]]
        want = model(seq, position_ids=torch.arange(seq.shape[1])[None]).logits[0, -1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_streaming_equals_token_by_token_without_shift():
    model = tiny_llama()
    apply_sepllm(model, separator_token_ids=SEPS)
    ids = _ids(1, 50, seed=4)
    with torch.no_grad():
        c1 = SepCache(2, 3, 6, 16)
        one = torch.cat([model(ids[:, t:t + 1], past_key_values=c1).logits for t in range(50)], 1)
        c2 = SepCache(2, 3, 6, 16)
        chunked = torch.cat([model(ids[:, t:t + 10], past_key_values=c2).logits for t in range(0, 50, 10)], 1)
    torch.testing.assert_close(one, chunked, rtol=1e-4, atol=1e-5)
    assert c1.core.kept_orig_positions(0) == c2.core.kept_orig_positions(0)


def test_bad_settings_get_clear_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="separator_token_ids \\[99\\]"):
        apply_sepllm(model, separator_token_ids=[3, 99])
    with pytest.raises(ValueError, match="Layer_num"):
        apply_sepllm(model, separator_token_ids=SEPS, Layer_num=32)
    with pytest.raises(ValueError, match="a \\+ s \\+ w < c"):
        SepCache(4, 64, 256, 300)
    with pytest.raises(ValueError, match="init_size must not be negative"):
        SepCache(-1, 4, 8, 32)
    with pytest.raises(ValueError, match="prefill_local_window_size"):
        apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=0)
    with pytest.raises(ValueError, match="unknown SepLLM settings"):
        apply_sepllm(model, separator_token_ids=SEPS, local_window=3)
    with pytest.raises(ValueError, match="cannot tell the separator ids"):
        apply_sepllm(model)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="model family 'gpt2' is not supported"):
        apply_sepllm(gpt2, separator_token_ids=SEPS)
    apply_sepllm(model, separator_token_ids=SEPS)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 32))


def _char_tokenizer():
    """A transformers tokenizer over single characters; '.' ',' ' ' '\\n' are ids 3-6."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ".,  \nabcdefghijklmnopqrstuvwxyzABCDEFGHI"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(dict.fromkeys(chars))}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_separator_ids_of_another_tokenizer_warn():
    tok = _char_tokenizer()
    assert [tok.decode([i]) for i in (3, 4, 5, 6)] == [".", ",", " ", "\n"]
    model = tiny_llama()
    with pytest.warns(UserWarning, match="mostly not separators under this tokenizer \\(10='d', 11='e', 12='f'\\)"):
        apply_sepllm(model, tokenizer=tok, separator_token_ids=[10, 11, 12])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_sepllm(model, tokenizer=tok, separator_token_ids=[3, 4, 5, 6])  # its own: no warning
        apply_sepllm(model, tokenizer=tok, mode="streamingllm", separator_token_ids=[10, 11])  # separators unused
    assert apply_sepllm(model, tokenizer=tok).separator_ids == [3, 4, 5, 6]  # found from the tokenizer


def test_beam_search_masks_each_beam_by_its_own_tokens():
    """transformers reorders the cache's rows between beam steps: the mask-mode history follows them."""
    model = tiny_llama(seed=4)
    apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=4, generate_local_window_size=4,
                 init_tok_max_idx=0)
    ids = _ids(1, 12, seed=3)
    out = model.generate(ids, num_beams=4, num_return_sequences=4, max_new_tokens=16, do_sample=False, length_penalty=0.0,
                         eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    for k in range(4):
        seq = out.sequences[k:k + 1]
        with torch.no_grad():
            logp = model(seq).logits.log_softmax(-1)  # one prefill forward: decoding windows equal prefill ones here
        rescored = logp[0, 11:-1].gather(-1, seq[0, 12:, None]).sum()
        assert float(out.sequences_scores[k]) == pytest.approx(float(rescored), abs=1e-3)


def test_positional_mask_and_cache_are_seen():
    model = tiny_llama(seed=5)
    apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=8)
    ids = _ids(2, 24, seed=6)
    mask = torch.ones_like(ids)
    mask[1, :10] = 0  # row 1 left-padded
    with torch.no_grad():
        by_name = model(ids, attention_mask=mask).logits
        positional = model(ids, mask).logits
        assert torch.equal(positional[:, 10:], by_name[:, 10:])
        cached = model(ids, attention_mask=mask, past_key_values=SepCache(2, 4, 8, 20)).logits
        assert torch.equal(model(ids, mask, None, SepCache(2, 4, 8, 20)).logits[:, 10:], cached[:, 10:])
        assert not torch.allclose(model(ids).logits[1, 10:], by_name[1, 10:], atol=1e-3)  # the padding matters


def test_models_with_a_sliding_window_keep_it():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=1024, sliding_window=8, attn_implementation="sdpa")
    model = MistralForCausalLM(cfg).eval()
    ids = _ids(1, 30, seed=1)
    with torch.no_grad():
        plain = model(ids).logits
        apply_sepllm(model, mode="vanilla")
        assert torch.allclose(model(ids).logits, plain, atol=1e-5)  # "run the model without any modification"
        remove_sepllm(model)
        apply_sepllm(model, separator_token_ids=SEPS, prefill_local_window_size=4, init_tok_max_idx=0)
        ours = model(ids).logits
        with pytest.raises(ValueError, match="sliding window of 8 tokens, which SepCache does not model"):
            model(ids, past_key_values=SepCache(2, 4, 8, 20))
    # SepLLM's mask and the model's window together, against a masked forward of the unmodified model
    remove_sepllm(model)
    keep = torch.tensor(reference_keep_mask(ids.tolist(), mode="sepllm", window=4, init_tok_max_idx=0, separator_ids=SEPS))
    i, j = torch.arange(30)[:, None], torch.arange(30)[None, :]
    with torch.no_grad():
        want = model(ids, attention_mask=(keep & (i - j < 8))[:, None]).logits
    assert torch.allclose(ours, want, atol=1e-4)
