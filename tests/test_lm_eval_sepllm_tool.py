"""tools/lm_eval_sepllm.py as a new user meets it: CPU machines, converted SepLLM models, settings
of an upstream YAML that do not fit the model, and bad input reported without a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import ROOT, load_tool, sepllm_checkpoint
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

pytest.importorskip("lm_eval")
tool = load_tool("lm_eval_sepllm")


@pytest.fixture(scope="module")
def sepllm_hf_dir(tmp_path_factory):
    """A SepLLM-trained checkpoint converted by convert_neox_to_hf.py (model type sepllm_gpt_neox)."""
    folder = tmp_path_factory.mktemp("lm_eval_tool")
    sepllm_checkpoint(folder, folder / "save")
    return load_tool("convert_neox_to_hf").main(["--input_dir", str(folder / "save"), "--output_dir", str(folder / "hf")])


def test_converted_sepllm_model_loads_on_cpu_without_a_device_flag(sepllm_hf_dir):
    import torch

    lm, runtime = tool.build_lm({"pretrained": str(sepllm_hf_dir)}, {}, 1, None)
    assert lm.model.config.model_type == "sepllm_gpt_neox"
    if not torch.cuda.is_available():
        assert lm.device.type == "cpu"
    assert runtime is not None and runtime.kv_report()["mode"] == "sepllm"  # its own SepLLM settings


def test_sepllm_settings_can_be_overridden_in_model_args():
    hf, sep, overrides = tool.split_model_args(
        "pretrained=m,sepllm_config=a.yml,sepllm_Layer_num=30,sepllm_separator_token_ids=smollm2,sepcache=4:8:16:64")
    assert hf == {"pretrained": "m"}
    assert sep == {"sepllm_config": "a.yml", "sepcache": "4:8:16:64"}
    assert overrides == {"Layer_num": 30, "separator_token_ids": "smollm2"}
    with pytest.raises(ValueError, match="sepllm_Layer_nums.*sepllm_SETTING"):
        tool.split_model_args("pretrained=m,sepllm_Layer_nums=30")


def test_a_missing_local_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained=.*nope is not a directory"):
        tool.check_pretrained({"pretrained": str(tmp_path / "nope")})
    tool.check_pretrained({"pretrained": "EleutherAI/pythia-160m"})  # a Hub id is left to transformers


def test_unknown_task_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "tools/lm_eval_sepllm.py", "--model_args", f"pretrained={tmp_path}", "--tasks", "no_such_task"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "lm_eval_sepllm: unknown lm-eval task(s) ['no_such_task']" in done.stderr


def test_sepcache_follows_the_settings_attention_rule(sepllm_hf_dir):
    assert tool.check_sep_args({"sepcache": "4:0:60:64", "sepllm_mode": "streamingllm"}) == (4, 0, 60, 64)
    with pytest.raises(ValueError, match="local_size must equal"):  # the StreamingLLM budget, not SepLLM's
        tool.check_sep_args({"sepcache": "4:0:50:64", "sepllm_mode": "streamingllm"})
    with pytest.raises(ValueError, match="sep_size"):
        tool.check_sep_args({"sepcache": "4:0:60:64"})  # SepLLM (the default) needs separators
    with pytest.raises(ValueError, match="ask for the full attention rule.*drop sepcache"):
        tool.check_sep_args({"sepcache": "4:8:16:64", "sepllm_mode": "vanilla"})
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    plain = sepllm_hf_dir.parent / "plain_llama"
    tok = AutoTokenizer.from_pretrained(sepllm_hf_dir)
    tok.save_pretrained(plain)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(plain)
    lm, runtime = tool.build_lm({"pretrained": str(plain)}, {"sepcache": "2:0:30:32", "sepllm_mode": "streamingllm"}, 1, None,
                                {"separator_token_ids": [1, 2]})
    shutil.rmtree(plain, ignore_errors=True)
    seen = []
    original = lm.model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs.get("past_key_values"))
        return original(*args, **kwargs)

    lm.model.generate = recording
    import torch

    lm._model_generate(torch.tensor([[1, 2, 3, 4]]), 8, ["\n\n"], do_sample=False)
    assert runtime.mode == "streaming" and "policy=streamingllm" in repr(seen[0])
