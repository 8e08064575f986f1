"""tools/lm_eval_sepllm.py on an offline local task with a tiny local model."""
import json
import shutil
import string
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r requirements/requirements-eval.txt)")

from tokenizers import Regex, Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from tools.lm_eval_sepllm import main as lm_eval_main  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lm_eval"
CHARS = string.ascii_letters + string.digits + " .,;:!?\n'-"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama_eval")
    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>", pad_token="</s>").save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, eos_token_id=1, pad_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture()
def tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    d = tmp_path / "tasks"
    d.mkdir()
    shutil.copy(FIXTURES / "toy.jsonl", d / "toy.jsonl")
    for name in ("sepllm_toy.yaml", "sepllm_toy_gen.yaml"):
        text = (FIXTURES / name).read_text().replace("test: toy.jsonl", f"test: {d / 'toy.jsonl'}")
        (d / name).write_text(text)
    return d


def _recorded_loglikelihoods(monkeypatch) -> list:
    """The log-likelihoods lm-eval's HFLM computes from here on (one per request, in order)."""
    from lm_eval.models.huggingface import HFLM

    seen, original = [], HFLM._loglikelihood_tokens

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.extend(ll for ll, _ in out)
        return out

    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", recording)
    return seen


def test_loglikelihood_task_reports_kept_kv_ratio(model_dir, tasks, tmp_path, capsys, monkeypatch):
    seen = _recorded_loglikelihoods(monkeypatch)
    lm_eval_main(["--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", "sepllm_toy",
                  "--include_path", str(tasks), "--device", "cpu"])
    vanilla = list(seen)
    seen.clear()
    out = tmp_path / "res.json"
    # A window shorter than the questions, so that streaming attention hides some keys.
    lm_eval_main(["--model_args", f"pretrained={model_dir},sepllm_mode=streamingllm,sepllm_prefill_local_window_size=4,"
                  "dtype=float32", "--tasks", "sepllm_toy", "--include_path", str(tasks), "--device", "cpu",
                  "--output_path", str(out)])
    printed = capsys.readouterr().out
    assert "sepllm_toy" in printed and "kept-KV ratio" in printed
    saved = json.loads(out.read_text())
    assert "acc,none" in saved["results"]["sepllm_toy"]
    assert saved["sepllm"]["mode"] == "streaming" and 0.0 < saved["sepllm"]["attn_map_ratio"] < 0.9
    # The scores themselves come from the masked model: every request, scored again, moved.
    assert len(seen) == len(vanilla) > 0
    assert min(abs(a - b) for a, b in zip(seen, vanilla)) > 1e-4


def test_generation_task_with_sepcache(model_dir, tasks, monkeypatch):
    from megatron.sepllm.hf import SepCache

    held, seen = [], []
    original = SepCache.update

    def recording(self, key_states, value_states, layer_idx, *args, **kwargs):
        held.append(self.core.held(layer_idx))  # entries kept from earlier forwards (evictions applied)
        out = original(self, key_states, value_states, layer_idx, *args, **kwargs)
        seen.append(self.core.columns_seen)
        return out

    monkeypatch.setattr(SepCache, "update", recording)
    res = lm_eval_main(["--model_args", f"pretrained={model_dir},sepllm_mode=sepllm,sepcache=2:4:8:16,dtype=float32",
                        "--tasks", "sepllm_toy_gen", "--include_path", str(tasks), "--device", "cpu", "--limit", "3"])
    assert "exact_match,none" in res["results"]["sepllm_toy_gen"]
    assert res["sepllm"]["mode"] == "sepcache"
    # Generation ran through the SepCache, past its capacity, and kept at most its capacity between forwards.
    assert held and max(seen) > 16 and max(held) == 16


def test_bad_sepllm_model_args(model_dir):
    with pytest.raises(ValueError, match="sepcache must be a:s:w:c"):
        lm_eval_main(["--model_args", f"pretrained={model_dir},sepcache=4:8", "--tasks", "sepllm_toy"])
    with pytest.raises(ValueError, match="unknown SepLLM model_args"):
        lm_eval_main(["--model_args", f"pretrained={model_dir},sepllm_window=3", "--tasks", "sepllm_toy"])
