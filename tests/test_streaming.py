"""Streaming perplexity: tools/streaming_perplexity.py on a tiny local model and text files."""
import json
import math
import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from megatron.inference.streaming import StreamingSettings, evaluate_stream, prepare_model
from test_convert_fixtures import randomise
from tools.streaming_perplexity import main as streaming_main

CHARS = string.ascii_letters + string.digits + " .,;:!?\n\t'-"
TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin nuzzled "
        "into his breast in an effort to escape the vile wind, slipped quickly through the glass doors of Victory "
        "Mansions; though not quickly enough to prevent a swirl of gritty dust from entering along with him.\n")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg)
    # Larger random weights than the initialiser's: its near-uniform predictions (perplexity ~ the
    # vocabulary size whatever the context) would hide a wrong cache.
    randomise(model, 0)
    model.save_pretrained(d)
    return d


def _nlls(out_dir) -> list[float]:
    return [float(x) for x in (out_dir / "log.txt").read_text().split()]


def _full_context_nlls(model_dir, text: str) -> list[float]:
    """Per-token NLLs of one text under full attention, by a plain transformers forward."""
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").tolist()


@pytest.fixture()
def books(tmp_path):
    d = tmp_path / "books"
    d.mkdir()
    (d / "a.txt").write_text(TEXT)
    (d / "b.txt").write_text(TEXT.upper())
    return d


def _run(model_dir, books, out, *extra):
    return streaming_main(["--model_name_or_path", str(model_dir), "--dataset_name", "pg19", "--data_path", str(books),
                           "--output_dir", str(out), "--num_eval_tokens", "300", "--device", "cpu", "--dtype", "float32",
                           "--cache_size", "40", "--init_cache_size", "4", "--sep_cache_size", "8", "--local_size", "16",
                           *extra])


def test_token_and_chunked_modes_write_upstream_outputs(tiny_model_dir, books, tmp_path):
    token = _run(tiny_model_dir, books, tmp_path / "token", "--enable_pos_shift", "False")
    chunk = _run(tiny_model_dir, books, tmp_path / "chunk", "--enable_pos_shift", "False", "--chunk_size", "16",
                 "--plot_with", str(tmp_path / "token"))
    nll = [float(x) for x in (tmp_path / "chunk" / "log.txt").read_text().split()]
    assert len(nll) == 300 and chunk["tokens"] == 300
    assert float((tmp_path / "chunk" / "ppl.txt").read_text()) == pytest.approx(math.exp(sum(nll) / 300))
    assert (tmp_path / "chunk" / "running_ppl.png").stat().st_size > 1000
    # Without position shifting, chunked mode sees exactly what token mode sees.
    assert chunk["ppl"] == pytest.approx(token["ppl"], rel=1e-4)
    assert chunk["max_cache_entries"] <= 40 and token["max_cache_entries"] <= 40
    assert json.loads((tmp_path / "chunk" / "summary.json").read_text())["method"] == "sepllm"


def test_pos_shift_chunked_is_close_to_token_mode(tiny_model_dir, books, tmp_path):
    token = _run(tiny_model_dir, books, tmp_path / "t")
    chunk = _run(tiny_model_dir, books, tmp_path / "c", "--chunk_size", "8")
    full = _full_context_nlls(tiny_model_dir, TEXT)
    t, c = _nlls(tmp_path / "t"), _nlls(tmp_path / "c")
    # Until the cache (40 entries) first fills, nothing is evicted or shifted: both modes are full attention.
    assert t[:39] == pytest.approx(full[:39], rel=1e-4, abs=1e-4) and c[:39] == pytest.approx(full[:39], rel=1e-4, abs=1e-4)
    # Past that, evictions change the predictions, and chunks of 8 evict a little later than single tokens.
    n = len(full)
    assert t[39:n] != pytest.approx(full[39:], rel=1e-3)
    assert chunk["ppl"] == pytest.approx(token["ppl"], rel=0.05)
    assert c[39:n] != pytest.approx(t[39:n], rel=1e-4)


def test_streamingllm_and_full_baselines(tiny_model_dir, books, tmp_path):
    s = _run(tiny_model_dir, books, tmp_path / "s", "--enable_SepLLM", "False", "--enable_StreamingLLM", "True",
             "--local_size", "36", "--chunk_size", "10")
    f = _run(tiny_model_dir, books, tmp_path / "f", "--enable_kv_cache_manager", "False", "--chunk_size", "50")
    assert s["max_cache_entries"] <= 40 and math.isfinite(s["ppl"])
    assert f["max_cache_entries"] > 40
    # Without a cache manager, every token sees its whole text: a plain forward over each book.
    full = _full_context_nlls(tiny_model_dir, TEXT) + _full_context_nlls(tiny_model_dir, TEXT.upper())
    assert _nlls(tmp_path / "f") == pytest.approx(full[:300], rel=1e-4, abs=1e-4)
    # StreamingLLM matches it until the cache first fills, and departs from it afterwards.
    streaming = _nlls(tmp_path / "s")
    assert streaming[:39] == pytest.approx(full[:39], rel=1e-4, abs=1e-4)
    assert streaming[40:len(TEXT) - 1] != pytest.approx(full[40:len(TEXT) - 1], rel=1e-3)
    with pytest.raises(ValueError, match="local_size must equal"):
        _run(tiny_model_dir, books, tmp_path / "x", "--enable_SepLLM", "False", "--enable_StreamingLLM", "True")
    with pytest.raises(ValueError, match="not both"):
        _run(tiny_model_dir, books, tmp_path / "x", "--enable_StreamingLLM", "True")


def test_cache_is_reset_between_texts_unless_concatenated(tiny_model_dir):
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    settings = StreamingSettings("sepllm", 2, 4, 8, 20, True, "evict", 5)
    prepare_model(model, settings, separator_ids=[1, 2])
    a = torch.randint(1, 60, (50,))
    b = torch.randint(1, 60, (50,))
    apart = evaluate_stream(model, [a, b], settings)
    alone_b = evaluate_stream(model, [b], settings)
    assert len(apart.nlls) == 98
    assert apart.nlls[49:] == pytest.approx(alone_b.nlls, rel=1e-5, abs=1e-6)
    joined = evaluate_stream(model, [a, b], settings, concat=True)
    # upstream's count: each text predicts its own tokens after the first; b is read with a's cache
    assert len(joined.nlls) == 98 and joined.nlls[:49] == pytest.approx(apart.nlls[:49], rel=1e-5, abs=1e-6)
    assert joined.nlls[49:] != pytest.approx(alone_b.nlls, rel=1e-3)
    # the same as feeding a[:-1] + b[:-1] as one stream and scoring only the within-text predictions
    from megatron.inference.streaming import stream_text

    cache = settings.new_cache()
    fed = torch.cat([a[:-1], b[:-1]])
    scored = [float(x) for step in stream_text(model, fed, cache, 5, labels=torch.cat([a[1:], b[1:]])) for x in step.nll]
    assert joined.nlls == pytest.approx(scored, rel=1e-5, abs=1e-6)
    assert len(evaluate_stream(model, [a[:1], b], settings, concat=True).nlls) == 49  # a one-token text adds nothing


def test_streams_our_own_checkpoint(tmp_path):
    """A checkpoint saved by our trainer streams directly (SepLLM-trained models convert to the sepllm_* HF types)."""
    from test_convert_fixtures import NEOX, make_tokenizer, save_checkpoint_of, sepllm, write_config

    vocab = make_tokenizer(tmp_path / "tok")
    config = write_config(tmp_path / "cfg.yml", vocab, tmp_path / "save", **NEOX, **sepllm(4))
    save_checkpoint_of(config, seed=3)
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(TEXT * 3)
    common = ["--model_name_or_path", str(tmp_path / "save"), "--data_path", str(books), "--num_eval_tokens", "120",
              "--device", "cpu", "--dtype", "float32", "--cache_size", "40", "--init_cache_size", "4",
              "--sep_cache_size", "8", "--local_size", "16", "--enable_pos_shift", "False"]
    token = streaming_main([*common, "--output_dir", str(tmp_path / "t")])
    chunk = streaming_main([*common, "--output_dir", str(tmp_path / "c"), "--chunk_size", "16"])
    assert token["tokens"] == 120 and math.isfinite(token["ppl"]) and token["max_cache_entries"] <= 40
    assert chunk["ppl"] == pytest.approx(token["ppl"], rel=1e-4)
