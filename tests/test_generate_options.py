"""generate.py's `return_logits` (a GPT-NeoX generation key) is acted on, not silently ignored."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_convert_fixtures import NEOX, make_tokenizer, save_checkpoint_of, sepllm, write_config
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

import generate


def test_return_logits_writes_the_logit_of_every_generated_token(tmp_path):
    from megatron.checkpointing.export import hf_tokenizer
    from megatron.neox_arguments import NeoXArgs

    vocab = make_tokenizer(tmp_path / "tok")
    # The window (16) covers the whole sample, so our full-sequence forward is the reference.
    config = write_config(tmp_path / "cfg.yml", vocab, tmp_path / "save", **NEOX, **sepllm(16))
    _, model = save_checkpoint_of(config, seed=5)
    (tmp_path / "prompts.txt").write_text("The quick brown fox\n")
    gen = tmp_path / "gen.yml"
    keys = dict(sample_input_file=str(tmp_path / "prompts.txt"), sample_output_file=str(tmp_path / "out.jsonl"),
                maximum_tokens=6, temperature=0.0)
    gen.write_text(yaml.safe_dump({**keys, "return_logits": True}))
    (record,) = generate.main([str(config), str(gen)])
    assert json.loads((tmp_path / "out.jsonl").read_text()) == record

    tokenizer = hf_tokenizer(NeoXArgs.from_files([str(config)]).tokenizer)
    prompt = tokenizer("The quick brown fox")["input_ids"]
    new = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
    if record["finished"]:
        new.append(tokenizer.eos_token_id)
    assert len(record["logits"]) == len(new) > 0
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))[0]
    expected = [float(logits[len(prompt) - 1 + i, token]) for i, token in enumerate(new)]
    torch.testing.assert_close(torch.tensor(record["logits"]), torch.tensor(expected), rtol=0, atol=1e-4)

    gen.write_text(yaml.safe_dump(keys))
    (plain,) = generate.main([str(config), str(gen)])
    assert "logits" not in plain and plain["text"] == record["text"]


def test_help_prints_the_generation_keys(capsys):
    with pytest.raises(SystemExit) as done:
        generate.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "text_gen_type" in out and "sample_input_file" in out and "return_logits" in out
