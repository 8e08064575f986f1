"""SepCache on the real SmolLM2-135M-Instruct (GGUF, Llama architecture)."""
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron.sepllm.hf import SepCache, apply_sepllm, remove_sepllm

PROMPT = ("The history of the city begins in the year 1200, when a small group of farmers settled near the river. "
          "Over the next centuries, the town grew into")


@pytest.mark.slow
def test_smollm2_sepcache_matches_vanilla_and_streams_within_capacity(smollm2_gguf):
    directory, name = os.path.split(smollm2_gguf)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name).eval()
    inputs = tok(PROMPT, return_tensors="pt")
    n_prompt = inputs.input_ids.shape[1]
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    runtime = apply_sepllm(model, tokenizer=tok)
    with torch.no_grad():
        same = model.generate(**inputs, max_new_tokens=16, do_sample=False, past_key_values=SepCache(4, 16, 32, 1024))
    assert torch.equal(same, vanilla), "SepCache with capacity above the length must equal vanilla generation"

    cache = SepCache(4, 16, 48, 96)
    held = []
    hook = model.register_forward_hook(lambda *a: held.append(max(cache.core.held(i) for i in range(30))))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=100, do_sample=False, past_key_values=cache)
    hook.remove()
    assert max(held) <= 96 and cache.core.layout.seen.item() == n_prompt + 99
    assert runtime.kv_report()["kv_ratio"] <= 96 / (n_prompt + 99) + 1e-9
    # Coherent continuation: the full-attention model finds the generated text likely.
    remove_sepllm(model)
    with torch.no_grad():
        logits = model(out).logits[0, n_prompt - 1:-1]
    nll = torch.nn.functional.cross_entropy(logits, out[0, n_prompt:])
    assert nll.item() < 2.5, f"generated text is unlikely under the full model (mean NLL {nll.item():.2f})"
    assert len(set(out[0, n_prompt:].tolist())) > 20
