"""tools/preprocess_data.py and the pipeline behind it: inputs, round trips, bad records, atomicity."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from megatron.data.document_reader import BadRecord
from megatron.data.indexed_format import inspect_indexed_dataset
from megatron.data.preprocess import preprocess
from megatron.data.tokenizers import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "data"
NEOX_JSON = str(REPO / "data" / "demo" / "gpt-neox-20b-tokenizer.json")
TINY_TEXTS = [json.loads(line)["text"] for line in (FIX / "tiny.jsonl").read_text(encoding="utf-8").splitlines()]
NONEMPTY = [t for t in TINY_TEXTS if t.strip()]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("HFTokenizer", NEOX_JSON)


def _documents(prefix):
    """Documents of a dataset, read through megatron-core's reader."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    ds = IndexedDataset(str(prefix))
    return [ds[i].astype(np.int64).tolist() for i in range(len(ds))]


def test_jsonl_round_trip_with_eod_and_empty_documents_counted(tmp_path, tok):
    s = preprocess(inputs=str(FIX / "tiny.jsonl"), output_prefix=str(tmp_path / "out"), tokenizer=tok, append_eod=True, progress=False)
    assert (s.documents, s.empty_skipped, s.bad_skipped, s.files) == (4, 2, 0, 1)
    docs = _documents(tmp_path / "out_text_document")
    assert s.tokens == sum(map(len, docs))
    assert all(d[-1] == tok.eod for d in docs)
    assert [tok.detokenize(d[:-1]) for d in docs] == NONEMPTY  # lossless: the input documents come back
    assert inspect_indexed_dataset(tmp_path / "out_text_document").dtype == np.uint16


def test_zst_input_and_several_keys_make_one_dataset_per_key(tmp_path, tok):
    import zstandard

    src = (FIX / "tiny.jsonl").read_bytes()
    # Two frames: readers must continue across frame boundaries.
    half = src.index(b"\n", len(src) // 2) + 1
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "tiny.jsonl.zst").write_bytes(cctx.compress(src[:half]) + cctx.compress(src[half:]))
    s = preprocess(inputs=str(tmp_path / "tiny.jsonl.zst"), output_prefix=str(tmp_path / "z"), tokenizer=tok,
                   keys=["text", "title"], progress=False)
    texts = [tok.detokenize(d) for d in _documents(tmp_path / "z_text_document")]
    titles = [tok.detokenize(d) for d in _documents(tmp_path / "z_title_document")]
    assert texts == NONEMPTY
    assert titles == ["One", "Two", "Empty", "Blank", "Four", "Five"]
    assert s.documents == 10 and s.empty_skipped == 2


def test_txt_file_and_paragraph_modes(tmp_path, tok):
    text = (FIX / "paragraphs.txt").read_text()
    preprocess(inputs=str(FIX / "paragraphs.txt"), output_prefix=str(tmp_path / "f"), tokenizer=tok, progress=False)
    assert [tok.detokenize(d) for d in _documents(tmp_path / "f_text_document")] == [text]
    preprocess(inputs=str(FIX / "paragraphs.txt"), output_prefix=str(tmp_path / "p"), tokenizer=tok,
               txt_mode="paragraph", append_eod=True, progress=False)
    paragraphs = [tok.detokenize(d[:-1]) for d in _documents(tmp_path / "p_text_document")]
    assert paragraphs == [
        "Chapter one. The sea was calm, the sky clear; nobody spoke.\nIt went on like that for a while.",
        "Chapter two? Nobody knew!",
        "Chapter three: the end.",
    ]


def test_inputs_expand_folders_globs_and_lists_in_order(tmp_path, tok):
    for name in ("b.txt", "a.txt"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(f"text of {name}")
    (tmp_path / "in" / "skip.csv").write_text("ignored")
    s = preprocess(inputs=f"{tmp_path / 'in'},{FIX / 'tiny.jsonl'}", output_prefix=str(tmp_path / "o"), tokenizer=tok, progress=False)
    docs = [tok.detokenize(d) for d in _documents(tmp_path / "o_text_document")]
    assert docs == ["text of a.txt", "text of b.txt"] + NONEMPTY and s.files == 3
    s = preprocess(inputs=str(tmp_path / "in" / "*.txt"), output_prefix=str(tmp_path / "g"), tokenizer=tok, progress=False)
    assert s.documents == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preprocess(inputs=str(tmp_path / "nope.jsonl"), output_prefix=str(tmp_path / "x"), tokenizer=tok, progress=False)
    with pytest.raises(ValueError, match="unsupported input type"):
        preprocess(inputs=str(tmp_path / "in" / "skip.csv"), output_prefix=str(tmp_path / "x"), tokenizer=tok, progress=False)


def test_bad_record_stops_with_file_and_line_and_writes_nothing(tmp_path, tok):
    with pytest.raises(BadRecord, match=r"bad\.jsonl:2: invalid JSON.*--skip-bad-lines"):
        preprocess(inputs=str(FIX / "bad.jsonl"), output_prefix=str(tmp_path / "b"), tokenizer=tok, progress=False)
    assert os.listdir(tmp_path) == []


def test_skip_bad_lines_counts_each_kind(tmp_path, tok):
    s = preprocess(inputs=str(FIX / "bad.jsonl"), output_prefix=str(tmp_path / "b"), tokenizer=tok,
                   skip_bad_lines=True, progress=False, log=lambda m: None)
    assert s.documents == 3 and s.bad_skipped == 5
    reasons = "\n".join(s.bad_examples)
    for line, what in [(2, "invalid JSON"), (3, "missing key 'text'"), (4, "undecodable bytes"),
                       (5, "key 'text' holds int, expected a string"), (7, "expected a JSON object")]:
        assert re.search(rf"bad\.jsonl:{line}: {re.escape(what)}", reasons), (line, reasons)
    assert [tok.detokenize(d) for d in _documents(tmp_path / "b_text_document")] == ["good line one", "good line five", "good last line"]


def test_undecodable_txt_and_corrupt_zst_report_their_line(tmp_path, tok):
    (tmp_path / "t.txt").write_bytes(b"fine\n\nalso fine\nbroken \xff byte\n\nlast")
    with pytest.raises(BadRecord, match=r"t\.txt:4: undecodable bytes \(not UTF-8\) at byte 7"):
        preprocess(inputs=str(tmp_path / "t.txt"), output_prefix=str(tmp_path / "o"), tokenizer=tok, txt_mode="paragraph", progress=False)
    s = preprocess(inputs=str(tmp_path / "t.txt"), output_prefix=str(tmp_path / "o"), tokenizer=tok, txt_mode="paragraph",
                   skip_bad_lines=True, progress=False, log=lambda m: None)
    assert (s.documents, s.bad_skipped) == (2, 1)

    import zstandard

    blob = zstandard.ZstdCompressor().compress((FIX / "tiny.jsonl").read_bytes() * 50)
    (tmp_path / "c.jsonl.zst").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(BadRecord, match=r"c\.jsonl\.zst:\d+: corrupt zstd stream"):
        preprocess(inputs=str(tmp_path / "c.jsonl.zst"), output_prefix=str(tmp_path / "c"), tokenizer=tok, progress=False)


class _InterruptingTokenizer:
    """Wraps a tokenizer and raises KeyboardInterrupt on its second batch (a Ctrl-C mid-run)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def tokenize_batch(self, texts):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.inner.tokenize_batch(texts)


def test_interrupted_run_leaves_no_pair_and_keeps_the_previous_one(tmp_path, tok):
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i}. " * 20}) + "\n" for i in range(200)))
    prefix = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        preprocess(inputs=str(src), output_prefix=str(prefix), tokenizer=_InterruptingTokenizer(tok), batch_chars=2000, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["many.jsonl"]

    preprocess(inputs=str(FIX / "tiny.jsonl"), output_prefix=str(prefix), tokenizer=tok, progress=False)
    before = _documents(tmp_path / "out_text_document")
    with pytest.raises(KeyboardInterrupt):
        preprocess(inputs=str(src), output_prefix=str(prefix), tokenizer=_InterruptingTokenizer(tok), batch_chars=2000,
                   progress=False, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["many.jsonl", "out_text_document.bin", "out_text_document.idx"]
    assert _documents(tmp_path / "out_text_document") == before


def test_char_level_and_int32_vocabularies(tmp_path):
    s = preprocess(inputs=str(FIX / "tiny.jsonl"), output_prefix=str(tmp_path / "c"),
                   tokenizer=build_tokenizer("CharLevelTokenizer", None), append_eod=True, progress=False)
    assert s.documents == 4
    files = inspect_indexed_dataset(tmp_path / "c_text_document")
    assert files.dtype == np.uint16  # 512 ids fit
    docs = _documents(tmp_path / "c_text_document")
    assert [bytes(d[:-1]).decode() for d in docs] == NONEMPTY


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end_and_failure_exit_code(tmp_path, tok):
    out = _cli("--input", str(FIX / "tiny.jsonl"), "--output-prefix", str(tmp_path / "cli"),
               "--tokenizer-type", "HFTokenizer", "--vocab-file", NEOX_JSON, "--append-eod", "--workers", "1")
    assert out.returncode == 0, out.stderr
    assert re.search(r"documents: 4 written, 2 empty skipped, 0 bad records skipped", out.stdout)
    assert re.search(r"tokens: +\d+", out.stdout) and re.search(r"seconds: +[\d.]+ \(.*documents/s.*M tokens/s", out.stdout)
    assert [tok.detokenize(d[:-1]) for d in _documents(tmp_path / "cli_text_document")] == NONEMPTY

    bad = _cli("--input", str(FIX / "bad.jsonl"), "--output-prefix", str(tmp_path / "bad"),
               "--tokenizer-type", "HFTokenizer", "--vocab-file", NEOX_JSON)
    assert bad.returncode == 1
    assert "bad.jsonl:2: invalid JSON" in bad.stderr and "no output written" in bad.stderr
    assert not list(tmp_path.glob("bad*"))


def test_prepare_demo_data_is_idempotent(tmp_path):
    # On a copy of the repository's demo folder, so the test never races a real demo run.
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "data" / "demo", repo / "data" / "demo", ignore=shutil.ignore_patterns("*.bin", "*.idx", "*.json", "*.npy"))
    shutil.copy(NEOX_JSON, repo / "data" / "demo")
    (repo / "tools").mkdir()
    shutil.copy(REPO / "tools" / "prepare_demo_data.py", repo / "tools")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = lambda: subprocess.run([sys.executable, str(repo / "tools" / "prepare_demo_data.py")], capture_output=True, text=True, env=env, timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    assert "data_path: data/demo/demo_text_document" in first.stdout
    files = inspect_indexed_dataset(repo / "data" / "demo" / "demo_text_document")
    assert files.num_documents > 1000 and files.num_tokens > 200_000
    second = run()
    assert second.returncode == 0 and second.stdout.startswith("up to date")
    (repo / "data" / "demo" / "pg19_10321.txt").write_text("changed book\n\nwith two paragraphs\n")
    third = run()
    assert third.returncode == 0 and "documents:" in third.stdout
    assert inspect_indexed_dataset(repo / "data" / "demo" / "demo_text_document").num_tokens < files.num_tokens


def test_shell_expanded_glob_and_a_comma_list_together(tmp_path):
    for i in range(3):
        (tmp_path / f"book{i}.txt").write_text(f"book {i}. " * 10)
    (tmp_path / "extra.jsonl").write_text('{"text": "one more."}\n')
    books = sorted(str(p) for p in tmp_path.glob("book*.txt"))
    # Before: "error: unrecognized arguments: .../book1.txt".
    out = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", *books[:2], f"{books[2]},{tmp_path / 'extra.jsonl'}",
                          "--output-prefix", str(tmp_path / "d"), "--tokenizer-type", "CharLevelTokenizer", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "from 4 file(s)" in out.stdout
    assert inspect_indexed_dataset(tmp_path / "d_text_document").num_documents == 4


def test_output_prefix_naming_a_folder_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("text.")
    # Before: wrote a hidden-looking out/_text_document.bin/.idx pair.
    out = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(tmp_path / "a.txt"),
                          "--output-prefix", f"{tmp_path}/", "--tokenizer-type", "CharLevelTokenizer"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "names a folder" in out.stderr and f"{tmp_path}/mydata" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_run_that_would_write_no_documents_is_refused_and_writes_nothing(tmp_path):
    (tmp_path / "blank.jsonl").write_text('{"text": "  "}\n{"text": ""}\n')
    # Before: exit 0 and an empty dataset, with a warning.
    out = _cli("--input", str(tmp_path / "blank.jsonl"), "--output-prefix", str(tmp_path / "d"),
               "--tokenizer-type", "CharLevelTokenizer", "--no-progress")
    assert out.returncode == 1, out.stderr
    assert "no documents to write for key(s) 'text'" in out.stderr and "2 empty" in out.stderr and "no output written" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.jsonl"]


def test_existing_output_is_kept_unless_overwrite(tmp_path, tok):
    prefix = tmp_path / "o"
    preprocess(inputs=str(FIX / "tiny.jsonl"), output_prefix=str(prefix), tokenizer=tok, progress=False)
    before = _documents(tmp_path / "o_text_document")
    args = ("--input", str(FIX / "paragraphs.txt"), "--output-prefix", str(prefix), "--tokenizer-type", "HFTokenizer",
            "--vocab-file", NEOX_JSON, "--no-progress")
    # Before: silently replaced by the second run's documents.
    out = _cli(*args)
    assert out.returncode == 1
    assert "o_text_document.bin" in out.stderr and "already exist" in out.stderr and "--overwrite" in out.stderr
    assert _documents(tmp_path / "o_text_document") == before
    out = _cli(*args, "--overwrite")
    assert out.returncode == 0, out.stderr
    assert _documents(tmp_path / "o_text_document") != before


def test_sigterm_removes_the_temporary_outputs(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i}. " * 400}) + "\n" for i in range(4000)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src), "--output-prefix",
                             str(out / "d"), "--tokenizer-type", "CharLevelTokenizer", "--batch-mb", "0.2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not list(out.iterdir()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be stopped; give it more input"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted: no output written" in output
    assert list(out.iterdir()) == []


def test_several_keys_land_together_or_not_at_all(tmp_path, tok, monkeypatch):
    from megatron.data import indexed_format

    src = tmp_path / "two.jsonl"
    src.write_text("".join(json.dumps({"text": f"short {i}", "meta": f"longer meta {i}. " * 20}) + "\n" for i in range(50)))
    original, calls = indexed_format.IndexedDatasetWriter.prepare, []

    def full_disk_on_the_second(self):
        calls.append(self.bin_path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(self.bin_path))
        original(self)

    monkeypatch.setattr(indexed_format.IndexedDatasetWriter, "prepare", full_disk_on_the_second)
    with pytest.raises(OSError, match="No space left"):
        preprocess(inputs=str(src), output_prefix=str(tmp_path / "x"), tokenizer=tok, keys=["text", "meta"], progress=False)
    assert sorted(os.listdir(tmp_path)) == ["two.jsonl"]  # not the first key's pair alone


def test_reader_edge_cases(tmp_path, tok):
    import zstandard

    # an escaped lone surrogate is a bad record (no tokenizer can encode it); an escaped pair is text
    (tmp_path / "s.jsonl").write_text('{"text": "ok"}\n{"text": "bad \\ud800 x"}\n{"text": "pair \\ud83d\\ude00"}\n')
    with pytest.raises(BadRecord, match=r"s\.jsonl:2: key 'text' holds an unpaired surrogate escape \(\\ud800"):
        preprocess(inputs=str(tmp_path / "s.jsonl"), output_prefix=str(tmp_path / "s"), tokenizer=tok, progress=False)
    s = preprocess(inputs=str(tmp_path / "s.jsonl"), output_prefix=str(tmp_path / "s"), tokenizer=tok,
                   skip_bad_lines=True, progress=False, log=lambda m: None)
    assert (s.documents, s.bad_skipped) == (2, 1)
    assert [tok.detokenize(d) for d in _documents(tmp_path / "s_text_document")] == ["ok", "pair \U0001F600"]
    # CRLF paragraphs: no stray carriage return, and the file's last line end belongs to no paragraph
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "crlf.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    (tmp_path / "in" / "sub.txt").mkdir()  # a folder named like an input is not one
    preprocess(inputs=str(tmp_path / "in"), output_prefix=str(tmp_path / "p"), tokenizer=tok, txt_mode="paragraph",
               progress=False)
    assert [tok.detokenize(d) for d in _documents(tmp_path / "p_text_document")] == ["one\r\ntwo", "three"]
    # a long-window frame (zstd --long=31) is valid input
    text = (FIX / "tiny.jsonl").read_bytes()
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()  # no content size: the window stays 2 GiB
    (tmp_path / "long.jsonl.zst").write_bytes(stream.compress(text) + stream.flush())
    s = preprocess(inputs=str(tmp_path / "long.jsonl.zst"), output_prefix=str(tmp_path / "z"), tokenizer=tok, progress=False)
    assert [tok.detokenize(d) for d in _documents(tmp_path / "z_text_document")] == NONEMPTY


def test_cli_names_an_output_it_cannot_write(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that writes into read-only folders (root)")
        out = _cli("--input", str(FIX / "tiny.jsonl"), "--output-prefix", str(ro / "x"),
                   "--tokenizer-type", "HFTokenizer", "--vocab-file", NEOX_JSON)
        assert out.returncode == 1 and "error: Permission denied: " in out.stderr and "Traceback" not in out.stderr
    finally:
        ro.chmod(0o700)


def test_prompt_key_writes_label_datasets_that_leave_the_prompt_out(tmp_path, tok):
    from transformers import PreTrainedTokenizerFast

    rows = [{"prompt": "Q: two and two?\nA:", "text": " four.", "id": 1},
            {"prompt": "", "text": "No prompt here.", "id": 2},
            {"prompt": "Empty answer:", "text": " ", "id": 3},  # skipped and counted, in both datasets
            {"prompt": "Say hi:", "text": " hi", "id": 4}]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A tokenizer that starts every document with a BOS (as Llama's do): the text continues the
    # prompt's document, so it must not get a BOS of its own.
    PreTrainedTokenizerFast(tokenizer_file=NEOX_JSON, eos_token="<|endoftext|>", bos_token="<|padding|>",
                            pad_token="<|padding|>", add_bos_token=True).save_pretrained(tmp_path / "bos")
    # and one whose template also ends every document with an EOS: it must not fall between prompt and text
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    both = Tokenizer.from_file(NEOX_JSON)
    both.post_processor = TemplateProcessing(single="<|padding|> $A <|endoftext|>", special_tokens=[("<|padding|>", 1), ("<|endoftext|>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=both, eos_token="<|endoftext|>", bos_token="<|padding|>").save_pretrained(tmp_path / "eos")
    tokenizers = (("neox", tok), ("bos", build_tokenizer("HFAutoTokenizer", str(tmp_path / "bos"))),
                  ("eos", build_tokenizer("HFAutoTokenizer", str(tmp_path / "eos"))))
    for name, t in tokenizers:
        s = preprocess(inputs=str(tmp_path / "sft.jsonl"), output_prefix=str(tmp_path / name), tokenizer=t,
                       prompt_key="prompt", append_eod=True, progress=False)
        assert (s.documents, s.empty_skipped) == (3, 1)
        assert s.outputs == [str(tmp_path / f"{name}_text_document"), str(tmp_path / f"{name}_text_label_document")]
        docs, labels = _documents(tmp_path / f"{name}_text_document"), _documents(tmp_path / f"{name}_text_label_document")
        assert inspect_indexed_dataset(tmp_path / f"{name}_text_label_document").dtype == np.int32
        lead, trail = {"neox": ([], []), "bos": ([1], []), "eos": ([1], [0])}[name]
        for doc, label, row in zip(docs, labels, [rows[0], rows[1], rows[3]]):
            prompt = lead + t.tokenize_plain(row["prompt"])  # a BOS alone for an empty prompt
            assert doc == prompt + t.tokenize_plain(row["text"]) + trail + [t.eod]
            assert label == [-100] * len(prompt) + doc[len(prompt):]
            assert doc.count(1) == len(lead) and doc[:-1].count(0) == len(trail)  # specials only at the ends
    with pytest.raises(ValueError, match="also one of the text keys"):
        preprocess(inputs=str(tmp_path / "sft.jsonl"), output_prefix=str(tmp_path / "x"), tokenizer=tok,
                   prompt_key="text", progress=False)
    (tmp_path / "a.txt").write_text("plain text")
    with pytest.raises(ValueError, match="--prompt-key prompt reads prompts from JSON records, but .*a.txt is a plain-text file"):
        preprocess(inputs=str(tmp_path / "a.txt"), output_prefix=str(tmp_path / "x"), tokenizer=tok, prompt_key="prompt", progress=False)
