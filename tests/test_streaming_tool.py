"""tools/streaming_perplexity.py as a new user meets it: converted SepLLM models load, and bad
paths are reported before the model loads and the stream runs, without a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import ROOT, load_tool, sepllm_checkpoint
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

from megatron.inference.streaming_model import load_model_and_tokenizer

stream = load_tool("streaming_perplexity")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/save: a SepLLM-trained checkpoint; hf: its convert_neox_to_hf.py output (sepllm_gpt_neox)."""
    folder = tmp_path_factory.mktemp("stream_tool")
    sepllm_checkpoint(folder, folder / "runs" / "save")
    load_tool("convert_neox_to_hf").main(["--input_dir", str(folder / "runs" / "save"), "--output_dir", str(folder / "hf")])
    return folder


def test_converted_sepllm_directory_loads_like_its_checkpoint(runs):
    import torch

    # A fresh process: nothing has registered the sepllm_* model types with transformers yet.
    code = ("import sys; from megatron.inference.streaming_model import load_model_and_tokenizer as load; "
            "print(load(sys.argv[1])[0].config.model_type)")
    done = subprocess.run([sys.executable, "-c", code, str(runs / "hf")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "sepllm_gpt_neox"
    hf, _ = load_model_and_tokenizer(str(runs / "hf"))
    ours, _ = load_model_and_tokenizer(str(runs / "runs" / "save"))
    assert hf.config.model_type == ours.config.model_type == "sepllm_gpt_neox"
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)


def test_parent_of_a_save_directory_is_named(runs):
    with pytest.raises(FileNotFoundError, match="no config.json.*holds save directories \\(save\\)"):
        load_model_and_tokenizer(str(runs / "runs"))


@pytest.mark.parametrize("bad", [["--data_path", "MISSING"], ["--plot_with", "MISSING"]], ids=["data", "plot_with"])
def test_bad_paths_fail_before_the_model_loads(tmp_path, bad):
    # The model path is wrong too: the data / plot error must come first, before any slow work.
    argv = ["--model_name_or_path", str(tmp_path / "absent.gguf"), "--output_dir", str(tmp_path / "out"),
            "--data_path", str(tmp_path)] + [str(tmp_path / b) if b == "MISSING" else b for b in bad]
    with pytest.raises(FileNotFoundError, match=f"--{bad[0][2:]} .*MISSING"):
        stream.main(argv)
    assert not (tmp_path / "out").exists()


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "tools/streaming_perplexity.py", "--model_name_or_path", str(tmp_path / "absent.gguf"),
         "--data_path", str(tmp_path), "--output_dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "streaming_perplexity: GGUF file" in done.stderr and "absent.gguf does not exist" in done.stderr


def test_no_tokens_is_an_error_not_a_perfect_perplexity(runs, tmp_path):
    with pytest.raises(ValueError, match="--num_eval_tokens must be >= 1 \\(or 'all' to stream every text\\)"):
        stream.main(["--model_name_or_path", str(tmp_path / "absent.gguf"), "--num_eval_tokens", "0",
                     "--data_path", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="--num_samples must be >= 1"):
        stream.main(["--model_name_or_path", str(tmp_path / "absent.gguf"), "--num_samples", "0",
                     "--data_path", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert stream.parse_args(["--model_name_or_path", "m", "--num_eval_tokens", "all"]).num_eval_tokens is None
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no token was predicted"):
        stream.main(["--model_name_or_path", str(runs / "hf"), "--data_path", str(tmp_path / "books"),
                     "--init_cache_size", "2", "--sep_cache_size", "4", "--local_size", "8", "--cache_size", "16",
                     "--chunk_size", "4", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
