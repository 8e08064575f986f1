"""Our checkpoints -> HuggingFace directories: transformers loads them and computes our logits.

transformers is imported inside the tests: importing it imports triton, which must not happen
before test_sep_kernel.py sets TRITON_INTERPRET at its collection.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_convert_fixtures import FULL, LLAMA, NEOX, ROOT, TEXT, load_tool, make_tokenizer, sample_ids, save_checkpoint_of, sepllm, write_config
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

convert = load_tool("convert_neox_to_hf")


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _checkpoint(tmp_path, vocab_file, seed=0, **keys):
    config = write_config(tmp_path / "cfg.yml", vocab_file, tmp_path / "save", **keys)
    args, model = save_checkpoint_of(config, seed=seed)
    return config, args, model


def _ours_logits(model, ids):
    with torch.no_grad():
        return model(ids)


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits


SHAPES = {
    "neox-parallel-partial-rotary-untied": dict(NEOX),
    "neox-sequential-tied-relu": dict(NEOX, gpt_j_residual=False, no_weight_tying=False, rotary_pct=1.0, activation="relu"),
    "neox-no-bias-mlp": dict(NEOX, use_bias_in_mlp=False, rotary_emb_base=500),
    "llama-gqa-untied": dict(LLAMA),
    "llama-tied": dict(LLAMA, num_kv_heads=4, no_weight_tying=False),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_full_attention_models_match_ours(tmp_path, vocab_file, shape):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM, LlamaForCausalLM

    config, args, model = _checkpoint(tmp_path, vocab_file, seed=1, **SHAPES[shape], **FULL)
    out = convert.main(["--input_dir", str(tmp_path / "save" / "global_step5"), "--output_dir", str(tmp_path / "hf")])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf) is (LlamaForCausalLM if shape.startswith("llama") else GPTNeoXForCausalLM)
    ids = sample_ids(vocab_file)
    torch.testing.assert_close(_hf_logits(hf, ids), _ours_logits(model, ids), rtol=0, atol=1e-4)
    # The tokenizer went along and encodes as the training tokenizer does.
    from megatron.data.tokenizers import build_tokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok(TEXT)["input_ids"] == build_tokenizer("HFTokenizer", str(vocab_file)).tokenize(TEXT)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|padding|>"
    assert hf.config.eos_token_id == tok.eos_token_id


REMOTE_LOAD = """
import torch
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({out!r})
except ValueError as exc:
    print("refused:", "trust_remote_code" if "trust_remote_code" in str(exc) else exc)
model = AutoModelForCausalLM.from_pretrained({out!r}, trust_remote_code=True).eval()
print(type(model).__module__)
with torch.no_grad():
    torch.save(model(torch.load({ids!r})).logits, {logits!r})
"""


def test_sepllm_model_keeps_sepllm_attention(tmp_path, vocab_file):
    from transformers import AutoModelForCausalLM, GPTNeoXForCausalLM

    import megatron.checkpointing.sepllm_hf as sepllm_hf  # registers the SepLLM model types

    keys = sepllm(4, USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS=True, prefill_loc_win_size_list=[3, 6])
    config, args, model = _checkpoint(tmp_path, vocab_file, seed=2, **NEOX, **keys)
    out = convert.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "hf"),
                        "--config_file", str(config)])
    stored = json.loads((out / "config.json").read_text())
    assert stored["model_type"] == "sepllm_gpt_neox" and stored["sepllm"]["prefill_loc_win_size_list"] == [3, 6]
    assert stored["auto_map"]["AutoModelForCausalLM"].startswith("modeling_sepllm.")
    ids = sample_ids(vocab_file)
    expected = _ours_logits(model, ids)

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(hf, sepllm_hf.SepLLMGPTNeoXForCausalLM)
    torch.testing.assert_close(_hf_logits(hf, ids), expected, rtol=0, atol=1e-4)
    assert hf.sepllm_runtime.kv_report()["attn_map_ratio"] < 0.9

    # Without our package imported: plain transformers refuses it, trust_remote_code loads it.
    torch.save(ids, tmp_path / "ids.pt")
    script = REMOTE_LOAD.format(out=str(out), ids=str(tmp_path / "ids.pt"), logits=str(tmp_path / "logits.pt"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: trust_remote_code" in proc.stdout and "transformers_modules" in proc.stdout
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-4)

    # The same weights under full attention compute something else: the SepLLM mask matters here.
    from megatron.checkpointing.hf_mapping import hf_config_from_args

    plain = GPTNeoXForCausalLM(hf_config_from_args(args.model, None, hf.config.vocab_size, "neox"))
    plain.load_state_dict(hf.state_dict())
    assert (_hf_logits(plain.eval(), ids) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["streamingllm", "fixllm", "per-layer-generate"])
def test_other_sepllm_modes_match_ours(tmp_path, vocab_file, mode):
    from transformers import AutoModelForCausalLM

    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers the SepLLM model types)

    keys = {
        "streamingllm": sepllm(4, streamingLLM=True),
        "fixllm": sepllm(4, USE_FIXED_SEP_INTERVALs=True, fixed_sep_intervals_list=[3, 5]),
        "per-layer-generate": sepllm(5, USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS=True, generate_win_loc_size_list=[2, 64]),
    }[mode]
    _, _, model = _checkpoint(tmp_path, vocab_file, seed=4, **NEOX, **keys)
    out = convert.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "hf"), "--skip_tokenizer"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(vocab_file)
    torch.testing.assert_close(_hf_logits(hf, ids), _ours_logits(model, ids), rtol=0, atol=1e-4)
    assert hf.sepllm_runtime.kv_report()["attn_map_ratio"] < 0.9
    if mode == "per-layer-generate":
        # The generate windows act only on decoding steps: decode with them and with the same
        # model told to ignore them; the prompt's scores agree and the decoded tokens' do not.
        stored = json.loads((Path(out) / "config.json").read_text())
        assert stored["sepllm"]["USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS"] is True
        assert stored["sepllm"]["generate_win_loc_size_list"] == [2, 64]
        shutil.copytree(out, tmp_path / "hf_plain")
        stored["sepllm"]["USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS"] = False
        (tmp_path / "hf_plain" / "config.json").write_text(json.dumps(stored))
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_plain").eval()
        scores = [m.generate(ids[:1], max_new_tokens=4, do_sample=False, output_scores=True,
                             return_dict_in_generate=True).scores for m in (hf, plain)]
        torch.testing.assert_close(scores[0][0], scores[1][0])
        assert max(float((a - b).abs().max()) for a, b in zip(scores[0][1:], scores[1][1:])) > 1e-3


def test_llama_sepllm_model_and_bf16_output(tmp_path, vocab_file):
    from transformers import AutoModelForCausalLM

    import megatron.checkpointing.sepllm_hf as sepllm_hf

    config, args, model = _checkpoint(tmp_path, vocab_file, seed=3, **LLAMA, **sepllm(5))
    out = convert.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "hf"), "--precision", "bf16"])
    hf = AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
    assert isinstance(hf, sepllm_hf.SepLLMLlamaForCausalLM) and hf.dtype == torch.bfloat16
    ids = sample_ids(vocab_file)
    got, expected = _hf_logits(hf, ids).float(), _ours_logits(model, ids)
    assert float((got - expected).norm() / expected.norm()) < 2e-2  # bf16 keeps about 3 significant digits


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_tensor_and_pipeline_parallel_checkpoints_convert(tmp_path, vocab_file, tp, pp):
    """Checkpoints laid out for tensor/pipeline parallelism (written by megatron.parallel.reshard) merge back."""
    from transformers import AutoModelForCausalLM

    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers the SepLLM model types)
    from megatron.parallel.layout import Layout
    from megatron.parallel.reshard import reshard

    _, _, model = _checkpoint(tmp_path, vocab_file, seed=6, **NEOX, **sepllm(4))
    folder, _ = reshard(tmp_path / "save" / "global_step5", tmp_path / "split", Layout(tp=tp, pp=pp, dp=1))
    assert any(folder.glob("mp_rank_01_model_states.pt")) or any(folder.glob("layer_*"))
    out = convert.main(["--input_dir", str(tmp_path / "split"), "--output_dir", str(tmp_path / "hf"), "--skip_tokenizer"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(vocab_file)
    torch.testing.assert_close(_hf_logits(hf, ids), _ours_logits(model, ids), rtol=0, atol=1e-4)


def test_refusals(tmp_path, vocab_file):
    from megatron.checkpointing.checkpoint import CheckpointError

    config, args, _ = _checkpoint(tmp_path, vocab_file, **NEOX, **sepllm(4))
    folder = tmp_path / "save" / "global_step5"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        convert.main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "busy"), "--skip_tokenizer"])
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    # the step folder a save folder resolves to is the input too: --overwrite must not replace it
    with pytest.raises(ValueError, match="holds the input"):
        convert.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(folder), "--overwrite", "--skip_tokenizer"])
    assert (folder / "manifest.json").exists()
    bipe = write_config(tmp_path / "bipe.yml", args.tokenizer.vocab_file, tmp_path / "save", **NEOX, **sepllm(4), USE_BiPE=True)
    with pytest.raises(ValueError, match="USE_BiPE"):
        convert.main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "o"), "--config_file", str(bipe)])
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        convert.main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "o")])
    (tmp_path / "save" / "latest").unlink()
    # Its one step folder lost its manifest above: not offered as a checkpoint to pass.
    with pytest.raises(CheckpointError, match="step folders \\(global_step5\\) are saves that did not finish"):
        convert.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "o")])


def test_tokenizer_types_export_with_the_same_ids(tmp_path, vocab_file):
    import sentencepiece as spm
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from megatron.checkpointing.export import hf_tokenizer
    from megatron.data.tokenizers import build_tokenizer
    from megatron.neox_arguments.tokenizer import TokenizerArgs
    from test_convert_fixtures import EXTRA_TEXT

    Tokenizer.from_file(str(vocab_file)).model.save(str(tmp_path))  # vocab.json + merges.txt
    spm.SentencePieceTrainer.train(sentence_iterator=iter([TEXT, EXTRA_TEXT] * 20), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=120, user_defined_symbols=["<|endoftext|>"], minloglevel=2)
    cases = {
        "GPT2BPETokenizer": TokenizerArgs("GPT2BPETokenizer", str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")),
        "SPMTokenizer": TokenizerArgs("SPMTokenizer", str(tmp_path / "sp.model")),
    }
    for name, tok_args in cases.items():
        ours = build_tokenizer(tok_args.tokenizer_type, tok_args.vocab_file, tok_args.merge_file)
        exported = hf_tokenizer(tok_args)
        exported.save_pretrained(tmp_path / name)
        again = AutoTokenizer.from_pretrained(tmp_path / name)
        assert again(TEXT)["input_ids"] == ours.tokenize(TEXT), name
        assert again.eos_token_id == ours.eod, name
    with pytest.raises(ValueError, match="no transformers equivalent"):
        hf_tokenizer(TokenizerArgs("CharLevelTokenizer"))
