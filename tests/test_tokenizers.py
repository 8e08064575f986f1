"""Tokenizers by GPT-NeoX type: ids, EOD/pad, round trips, batch = single, separator ids."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.data.tokenizers import build_tokenizer
from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS

REPO = Path(__file__).resolve().parents[1]
NEOX_JSON = str(REPO / "data" / "demo" / "gpt-neox-20b-tokenizer.json")
TEXTS = [
    "Hello world. How are you?\nFine, thanks; and you: well!",
    "Tabs\tand  double  spaces,   triple too.",
    "Unicode: café, naïve, 日本語, emoji \U0001F600.",
    "",
]


@pytest.fixture(scope="module")
def neox():
    return build_tokenizer("HFTokenizer", NEOX_JSON)


def test_hf_tokenizer_matches_gpt_neox_definitions(neox):
    assert neox.vocab_size == 50277
    assert neox.eod == 0  # <|endoftext|>
    assert neox.pad == 1  # <|padding|>
    assert neox.tokenize("Hello world.\n") == [12092, 1533, 15, 187]
    for t in TEXTS:
        assert neox.detokenize(neox.tokenize(t)) == t
    assert [list(x) for x in neox.tokenize_batch(TEXTS)] == [neox.tokenize(t) for t in TEXTS]
    assert neox.detokenize(neox.tokenize("a") + [neox.eod]) == "a<|endoftext|>"


def test_type_names_are_case_insensitive_and_errors_are_clear(tmp_path):
    assert build_tokenizer("hftokenizer", NEOX_JSON).vocab_size == 50277
    with pytest.raises(ValueError, match="unknown tokenizer_type 'Nope'.*HFTokenizer"):
        build_tokenizer("Nope", NEOX_JSON)
    with pytest.raises(ValueError, match="needs a tokenizer JSON file"):
        build_tokenizer("HFTokenizer", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer("HFTokenizer", str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        build_tokenizer("HFTokenizer", str(bad))


def test_tokenizer_json_truncation_settings_are_ignored(tmp_path, neox):
    cfg = json.loads(Path(NEOX_JSON).read_text())
    cfg["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    path = tmp_path / "truncating.json"
    path.write_text(json.dumps(cfg))
    tok = build_tokenizer("HFTokenizer", str(path))
    assert tok.tokenize(TEXTS[0]) == neox.tokenize(TEXTS[0])
    assert len(tok.tokenize(TEXTS[0])) > 4


def test_gpt2_bpe_from_vocab_and_merges_equals_the_same_bpe_as_json(tmp_path, neox):
    model = json.loads(Path(NEOX_JSON).read_text())["model"]
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(json.dumps(model["vocab"]))
    lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    merges.write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    tok = build_tokenizer("GPT2BPETokenizer", str(vocab), str(merges))
    assert tok.eod == 0 and tok.vocab_size == len(model["vocab"])
    for t in TEXTS[:3]:  # NFC-clean text without the 20B tokenizer's added whitespace tokens
        if "  " not in t:
            assert tok.tokenize(t) == neox.tokenize(t)
        assert tok.detokenize(tok.tokenize(t)) == t
    with pytest.raises(ValueError, match="merges.txt"):
        build_tokenizer("GPT2BPETokenizer", str(vocab), None)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    corpus = (REPO / "data" / "demo" / "pg19_10762.txt").read_text(encoding="utf-8")[:200_000]
    (d / "corpus.txt").write_text(corpus)
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "m"), vocab_size=600, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<|endoftext|>"], num_threads=1, minloglevel=2,
    )
    return str(d / "m.model")


def test_spm_tokenizer(spm_model):
    tok = build_tokenizer("SPMTokenizer", spm_model)
    assert tok.vocab_size == 600
    assert tok.eod == tok._sp.piece_to_id("<|endoftext|>")  # GPT-NeoX's EOD piece
    assert tok.pad == tok.eod  # no pad piece in this model
    texts = ["The sea was calm. Nobody spoke!", "Second text, with a comma; and more?"]
    assert [list(x) for x in tok.tokenize_batch(texts)] == [tok.tokenize(t) for t in texts]
    for t in texts:
        assert tok.detokenize(tok.tokenize(t)) == t
    # Separators are looked up as pieces: "\n" has no piece and falls back to its byte piece.
    assert tok._sp.id_to_piece(tok.single_token_id("\n")) == "<0x0A>"
    assert tok._sp.id_to_piece(tok.single_token_id(".")) == "."
    assert tok._sp.id_to_piece(tok.single_token_id(" ")) == "\u2581"


def test_char_level_tokenizer_round_trips_utf8():
    tok = build_tokenizer("CharLevelTokenizer", None)
    assert (tok.vocab_size, tok.eod, tok.pad) == (512, 0, 1)
    assert tok.tokenize("Hi!") == [72, 105, 33]
    for t in TEXTS:
        assert tok.detokenize(tok.tokenize(t)) == t
    assert [list(x) for x in tok.tokenize_batch(TEXTS)] == [tok.tokenize(t) for t in TEXTS]


def test_hf_auto_tokenizer_from_a_local_folder(tmp_path, neox):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_file=NEOX_JSON, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|padding|>"
    ).save_pretrained(tmp_path / "tok")
    tok = build_tokenizer("HFAutoTokenizer", str(tmp_path / "tok"))
    assert (tok.vocab_size, tok.eod, tok.pad) == (50277, 0, 1)
    for t in TEXTS:
        assert tok.tokenize(t) == neox.tokenize(t)
        assert tok.detokenize(tok.tokenize(t)) == t
    assert [list(x) for x in tok.tokenize_batch(TEXTS)] == [neox.tokenize(t) for t in TEXTS]
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        build_tokenizer("HFAutoTokenizer", str(tmp_path))
    # a tokenizer file given where a folder belongs: named, not taken for a Hub repository id
    (tmp_path / "tok" / "vocab.json").write_text('{"a": 0}')  # GPT-2 style: transformers parsed it as a model config
    for name in ("tokenizer.json", "vocab.json"):
        with pytest.raises(ValueError, match=f"from the file .*{name}.*tokenizer_type HFTokenizer"):
            build_tokenizer("HFAutoTokenizer", str(tmp_path / "tok" / name))
    # and the configuration check before launch takes the folder
    from megatron.neox_arguments import NeoXArgs
    from megatron.neox_arguments.readiness import _tokenizer_files

    shape = {"num_layers": 1, "hidden_size": 8, "num_attention_heads": 1, "seq_length": 8, "max_position_embeddings": 8}
    args = NeoXArgs.from_dict({**shape, "tokenizer_type": "HFAutoTokenizer", "vocab_file": str(tmp_path / "tok")})
    assert _tokenizer_files(args) == []
    args.tokenizer.vocab_file = str(tmp_path / "missing")
    assert "does not exist" in _tokenizer_files(args)[0]


def test_hf_auto_tokenizer_from_the_smollm2_gguf(smollm2_gguf):
    tok = build_tokenizer("HFAutoTokenizer", smollm2_gguf)
    assert [tok.tokenize(c) for c in ".,?!;: \t\n"] == [[i] for i in SEPARATOR_PRESETS["smollm2"]]
    assert tok.vocab_size == 49152
    assert tok.detokenize([tok.eod]) == "<|im_end|>"
    text = "Separators, everywhere: here. There!"
    assert tok.detokenize(tok.tokenize(text)).endswith(text)
    assert tok.single_token_id(".") is not None and tok.detokenize([tok.single_token_id(".")]) == "."


def _run_separator_tool(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "sepllm" / "get_separator_ids.py"), *args],
        capture_output=True, text=True, timeout=120,
    )


def test_separator_tool_reproduces_the_pythia_preset():
    out = _run_separator_tool("--tokenizer-type", "HFTokenizer", "--vocab-file", NEOX_JSON)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    ids = json.loads(last.split(":", 1)[1].split("#")[0])
    assert ids == SEPARATOR_PRESETS["pythia"]
    assert "preset 'pythia'" in last
    assert re.search(r"^\"\\n\"\s+187\s+'\\n'$", out.stdout, re.M)  # the decoded string is printed


def test_separator_tool_extended_list_matches_upstream_gpt_neox_ids(neox):
    from megatron.sepllm.separators import separator_ids

    ids = [i for _, i in separator_ids(neox, extended=True)]
    assert ids[:9] == SEPARATOR_PRESETS["pythia"]
    # upstream SepLLM's extended GPT-NeoX list: ' .', ' ,', ' ?', ' !', ' ;', ' :', ' \n', '  ', '   '
    assert ids[9:] == [964, 1157, 3736, 2195, 3706, 1163, 2490, 50276, 50275]
    bad = _run_separator_tool("--tokenizer-type", "HFTokenizer", "--vocab-file", "/nonexistent.json")
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_missing_merges_names_only_the_merge_file_setting():
    with pytest.raises(ValueError) as info:
        build_tokenizer("GPT2BPETokenizer", NEOX_JSON, None)
    assert str(info.value) == "GPT2BPETokenizer needs a merges.txt file (merge_file / --merge-file)"


def test_folder_without_tokenizer_files_points_to_hftokenizer(tmp_path):
    (tmp_path / "gpt-neox-20b-tokenizer.json").write_text("{}")
    # Before: transformers' message about converting a slow tokenizer with sentencepiece or tiktoken.
    with pytest.raises(ValueError, match="cannot load a tokenizer.*holds none of tokenizer.json.*tokenizer_type HFTokenizer"):
        build_tokenizer("HFAutoTokenizer", str(tmp_path))


def test_separator_ids_of_another_tokenizer_are_named(neox):
    from megatron.sepllm.separators import separator_mismatch

    assert separator_mismatch(neox, SEPARATOR_PRESETS["pythia"]) is None
    assert separator_mismatch(neox, [187]) is None  # only newlines: a choice, not a mistake
    # Llama-3's ids read with GPT-NeoX-20B's tokenizer: SepLLM would keep other tokens, without an error.
    message = separator_mismatch(neox, SEPARATOR_PRESETS["llama3"])
    assert message is not None and "mostly not separators" in message
    assert f"separator_token_ids: {SEPARATOR_PRESETS['pythia']}" in message and "preset 'pythia'" in message
    assert "13=" in message  # each id with what it decodes to
    # -1 entries stand for no token (the validation allows them); ids past the vocabulary are named as such
    assert separator_mismatch(neox, [-1, -1, 187]) is None
    assert separator_mismatch(neox, [-1]) is None
    assert "(not in the vocabulary)" in separator_mismatch(neox, [-1, 2**40, 50000, 13])


def test_text_outside_the_vocabulary_has_no_single_token_id(tmp_path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({"<unk>": 0, "<|endoftext|>": 1, ".": 2, "a": 3}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.save(str(tmp_path / "tok.json"))
    tok = build_tokenizer("HFTokenizer", str(tmp_path / "tok.json"))
    assert tok.single_token_id(".") == 2
    assert tok.tokenize("?") == [0] and tok.single_token_id("?") is None  # '?' encodes to <unk>
