"""generate.py on our checkpoints: GPT-NeoX's modes and output, SepLLM windows respected."""
from __future__ import annotations

import io
import json

import pytest
import torch
import yaml

from test_convert_fixtures import sepllm_checkpoint
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

import generate

PROMPTS = ["The quick brown fox jumps over", "It was a bright cold day, and the clocks"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A SepLLM checkpoint (window 4) and its config; returns (folder, model, config path)."""
    folder = tmp_path_factory.mktemp("gen")
    config, _, model = sepllm_checkpoint(folder, folder / "save", seed=11)
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return folder, model, config


def _gen_config(folder, name="gen.yml", **keys):
    values = dict(text_gen_type="input-file", sample_input_file=str(folder / "prompts.txt"),
                  sample_output_file=str(folder / f"{name}.jsonl"), maximum_tokens=10, temperature=0.0)
    values.update(keys)
    path = folder / name
    path.write_text(yaml.safe_dump(values))
    return path


def _greedy_reference(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy decoding with our model, recomputing the whole sequence at every step."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids + new]))[0, -1, : len(tokenizer)].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return new


@pytest.mark.parametrize("recompute", [False, True])
def test_input_file_greedy_equals_our_model(run, recompute):
    from megatron.checkpointing.export import hf_tokenizer
    from megatron.neox_arguments import NeoXArgs

    folder, model, config = run
    gen = _gen_config(folder, f"greedy{recompute}.yml", recompute=recompute)
    records = generate.main([str(config), str(gen)])
    lines = [json.loads(line) for line in (folder / f"greedy{recompute}.yml.jsonl").read_text().splitlines()]
    assert lines == records and [r["context"] for r in records] == PROMPTS
    tokenizer = hf_tokenizer(NeoXArgs.from_files([str(config)]).tokenizer)
    for record in records:
        expected = _greedy_reference(model, tokenizer, record["context"], 10)
        # The padded vocabulary rows beyond the tokenizer never win: the reference slices them off.
        assert record["length"] == len(expected)
        assert record["text"] == tokenizer.decode(expected, clean_up_tokenization_spaces=False)
        assert 0 < record["kv_ratio"] < 1 and set(record) >= {"finished", "duration_seconds"}


def test_cached_decoding_computes_our_logits(run):
    """With equal prefill and generate windows, every decoding step's logits are our model's on the whole sequence."""
    from megatron.checkpointing.export import inference_model
    from megatron.neox_arguments import NeoXArgs

    folder, ours, config = run
    model, tokenizer = inference_model(NeoXArgs.from_files([str(config)]))
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    out = model.generate(ids, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        for step, logits in enumerate(out.logits):
            expected = ours(out.sequences[:, : ids.shape[1] + step])[:, -1]
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_generate_window_is_used(run):
    from megatron.checkpointing.export import inference_model
    from megatron.neox_arguments import NeoXArgs

    folder, _, config = run
    wide = generate.main([str(config), str(_gen_config(folder, "wide.yml"))])
    narrow_config = _gen_config(folder, "narrow.yml", generate_local_window_size=1)
    narrow = generate.main([str(config), str(narrow_config)])
    assert all(n["kv_ratio"] < w["kv_ratio"] for n, w in zip(narrow, wide))
    # The prompt is read with the prefill window; only the new tokens' queries see the generate window.
    scores = {}
    for name, gen in (("wide", folder / "wide.yml"), ("narrow", narrow_config)):
        model, tokenizer = inference_model(NeoXArgs.from_files([str(config), str(gen)]))
        ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
        out = model.generate(ids, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        scores[name] = out.scores
    torch.testing.assert_close(scores["narrow"][0], scores["wide"][0])
    assert (scores["narrow"][1] - scores["wide"][1]).abs().max() > 1e-3


def test_unconditional_sampling_and_interactive(run, monkeypatch, capsys):
    folder, _, config = run
    gen = _gen_config(folder, "uncond.yml", text_gen_type="unconditional", num_samples=3, temperature=0.9,
                      top_k=20, top_p=0.9, maximum_tokens=6)
    records = generate.main([str(config), str(gen)])
    assert len(records) == 3 and all(r["context"] == "" and r["length"] <= 6 for r in records)
    assert len((folder / "uncond.yml.jsonl").read_text().splitlines()) == 3

    monkeypatch.setattr("sys.stdin", io.StringIO("The quick brown\nIt was\n"))
    records = generate.main([str(config), str(_gen_config(folder, "inter.yml", text_gen_type="interactive"))])
    assert [r["context"] for r in records] == ["The quick brown", "It was"]
    assert not (folder / "inter.yml.jsonl").exists()
    assert records[1]["text"] in capsys.readouterr().out


def test_config_errors_are_reported(run):
    folder, _, config = run
    gen = _gen_config(folder, "missing.yml", sample_input_file=str(folder / "nope.txt"))
    with pytest.raises(SystemExit, match="nope.txt"):
        generate.main([str(config), str(gen)])
