"""tools/reshard_checkpoint.py prints every setting the resumed run needs, and they make the new layout load the checkpoint."""
from __future__ import annotations

import json

import yaml
from test_convert_fixtures import NEOX, VOCAB_ROWS, load_tool, make_tokenizer, save_checkpoint_of, sepllm, write_config
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

reshard_tool = load_tool("reshard_checkpoint")


def test_printed_resume_settings_give_the_new_layout_the_checkpoints_vocabulary(tmp_path, capsys):
    from megatron.data.tokenizers import build_tokenizer
    from megatron.model import padded_vocab_size
    from megatron.neox_arguments import NeoXArgs

    vocab_file = make_tokenizer(tmp_path / "tok")
    config = write_config(tmp_path / "run.yml", vocab_file, tmp_path / "save", **NEOX, **sepllm(4))
    args, _ = save_checkpoint_of(config)
    capsys.readouterr()
    out = tmp_path / "tp2"
    assert reshard_tool.main([str(tmp_path / "save" / "global_step5"), str(out), "--model_parallel_size", "2"]) == 0
    printed = capsys.readouterr().out
    # Before: only `load` and no_load_optim were named, and the resumed run died on a vocabulary size mismatch.
    settings = yaml.safe_load("\n".join(line for line in printed.splitlines() if line.startswith("  ")))
    assert settings["load"] == str(out) and settings["model_parallel_size"] == 2 and settings["no_load_optim"] is True
    assert "make_vocab_size_divisible_by" in settings and "on 2 ranks" in printed
    manifest = json.loads((out / "global_step5" / "manifest.json").read_text())
    assert manifest["resharded"]["resume_settings"] == {k: v for k, v in settings.items() if k != "load"}

    overlay = tmp_path / "resume.yml"
    overlay.write_text(yaml.safe_dump(settings))
    resumed = NeoXArgs.from_files([config, overlay])
    vocab = build_tokenizer("HFTokenizer", str(vocab_file)).vocab_size
    assert padded_vocab_size(vocab, resumed.model.make_vocab_size_divisible_by, resumed.parallel.model_parallel_size) == VOCAB_ROWS
    assert padded_vocab_size(vocab, args.model.make_vocab_size_divisible_by, 2) != VOCAB_ROWS  # without the setting
