"""convert_hf_to_neox.py as a new user meets it: --overwrite never loses the previous import to a
failed one, and a folder that is not a transformers model says what it is."""
from __future__ import annotations

import pytest
from test_convert_fixtures import load_tool, make_tokenizer
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

to_neox = load_tool("convert_hf_to_neox")


def _pythia_dir(folder, vocab_file):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        rotary_pct=0.25, max_position_embeddings=64))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_file=str(vocab_file), eos_token="<|endoftext|>", pad_token="<|padding|>").save_pretrained(folder)
    return folder


def test_failed_overwrite_keeps_the_previous_import(tmp_path, monkeypatch):
    hf = _pythia_dir(tmp_path / "hf", make_tokenizer(tmp_path / "tok"))
    out = tmp_path / "imported"
    to_neox.main(["--hf_model", str(hf), "--output_dir", str(out)])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*_, **__):
        raise OSError("disk full")

    monkeypatch.setattr(to_neox, "write_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        to_neox.main(["--hf_model", str(hf), "--output_dir", str(out), "--overwrite"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "imported", "tok"]  # nothing left aside

    monkeypatch.undo()
    to_neox.main(["--hf_model", str(hf), "--output_dir", str(out), "--overwrite"])
    assert (out / "global_step0" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "imported", "tok"]


def test_folder_without_config_json_says_what_it_is(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json: pass a transformers model directory"):
        to_neox.load_hf(tmp_path / "notes")
    save = tmp_path / "save"
    save.mkdir()
    (save / "latest").write_text("global_step5")
    with pytest.raises(FileNotFoundError, match="one of our checkpoints already"):
        to_neox.load_hf(save)


def test_existing_config_out_needs_overwrite_and_is_checked_before_loading(tmp_path):
    keep = tmp_path / "mine.yml"
    keep.write_text("train_iters: 5\n")
    # the model path does not exist: the --config_out check comes first, before any loading
    with pytest.raises(ValueError, match="--config_out .*mine.yml exists; pass --overwrite"):
        to_neox.main(["--hf_model", str(tmp_path / "no_model"), "--output_dir", str(tmp_path / "out"),
                      "--config_out", str(keep)])
    assert keep.read_text() == "train_iters: 5\n"
