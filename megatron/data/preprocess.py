"""Raw documents to Megatron .bin/.idx files: the pipeline behind tools/preprocess_data.py.

A reader thread parses the inputs into batches while the main thread tokenizes the previous
batch (the tokenizer libraries release the GIL and use all cores) and appends the ids to one
IndexedDatasetWriter per JSON key. Outputs appear only when the whole run succeeded.
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from megatron.data.document_reader import BadRecord, expand_inputs, input_kind, read_records
from megatron.data.indexed_format import IndexedDatasetWriter, token_dtype_for_vocab
from megatron.data.tokenizers.base import Tokenizer


@dataclass
class PreprocessSummary:
    files: int = 0
    input_bytes: int = 0
    documents: int = 0
    tokens: int = 0
    empty_skipped: int = 0
    bad_skipped: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    bad_examples: list[str] = field(default_factory=list)

    def report(self) -> str:
        secs = max(self.seconds, 1e-9)
        lines = [
            f"documents: {self.documents:,} written, {self.empty_skipped:,} empty skipped, {self.bad_skipped:,} bad records skipped",
            f"tokens:    {self.tokens:,}",
            f"seconds:   {self.seconds:.2f} ({self.documents / secs:,.0f} documents/s, {self.tokens / secs / 1e6:.3f} M tokens/s, "
            f"{self.input_bytes / secs / 1e6:.1f} MB/s of input from {self.files} file(s))",
        ]
        lines += [f"output:    {p}.bin / .idx" for p in self.outputs]
        return "\n".join(lines)


def output_prefixes(output_prefix: str, keys: Sequence[str]) -> list[str]:
    """GPT-NeoX's naming: one dataset per JSON key, PREFIX_<key>_document."""
    return [f"{output_prefix}_{k}_document" for k in keys]


def label_prefixes(output_prefix: str, keys: Sequence[str]) -> list[str]:
    """GPT-NeoX's naming of the label datasets beside them: PREFIX_<key>_label_document."""
    return [f"{output_prefix}_{k}_label_document" for k in keys]


IGNORED_LABEL = -100  # a label that takes its position out of the loss (GPT-NeoX, transformers)


_END = object()
IN_FLIGHT = 2  # tokenizer batches encoding at once


def preprocess(
    *,
    inputs: str | Sequence[str],
    output_prefix: str,
    tokenizer: Tokenizer,
    keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    skip_bad_lines: bool = False,
    txt_mode: str = "file",
    workers: Optional[int] = None,
    batch_chars: Optional[int] = None,
    progress: Optional[bool] = None,
    overwrite: bool = False,
    prompt_key: Optional[str] = None,
    log=None,
) -> PreprocessSummary:
    """Tokenize `inputs` into PREFIX_<key>_document.bin/.idx; returns counts and timing.

    Bad records (invalid JSON, missing key, non-string value, undecodable bytes) raise
    BadRecord naming file and line, unless `skip_bad_lines`, which counts and skips them.
    Documents whose text is empty or only whitespace are skipped and counted. `workers`:
    tokenizer threads (None: all cores). `batch_chars`: text per tokenizer batch (None: 2M
    characters per thread, between 16M and 32M). `progress`: None shows a bar when stderr is a terminal.
    An existing output is replaced only with `overwrite` (checked before any work); a run that
    would write a dataset without documents raises and writes nothing.
    With `prompt_key` (JSON inputs), each document is the record's prompt followed by its text, and a
    label dataset PREFIX_<key>_label_document beside it holds the same tokens with the prompt's
    replaced by -100, so that training on it (train_label_data_paths) learns the text only.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    keys = list(keys)
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"keys must be distinct and non-empty, got {keys}")
    if prompt_key is not None and prompt_key in keys:
        raise ValueError(f"the prompt key {prompt_key!r} is also one of the text keys {keys}; a text key holds what follows the prompt")
    files = expand_inputs(inputs)
    plain_text = [f for f in files if input_kind(f) == "txt"] if prompt_key is not None else []
    if plain_text:
        raise ValueError(f"--prompt-key {prompt_key} reads prompts from JSON records, but {plain_text[0]} is a plain-text "
                         "file; give .jsonl or .jsonl.zst inputs")
    summary = PreprocessSummary(files=len(files))
    tokenizer.set_num_threads(workers)
    if batch_chars is None:
        # Large batches keep every thread busy when documents are long (whole books); the cap
        # bounds memory: encoding takes ~50 bytes per character, for IN_FLIGHT batches at once.
        batch_chars = min(32, max(16, 2 * (workers or os.cpu_count() or 1))) * 1_000_000
    eod = tokenizer.eod if append_eod else None
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    prefixes = output_prefixes(output_prefix, keys)
    labels = label_prefixes(output_prefix, keys) if prompt_key is not None else []
    specials = _template_specials(tokenizer) if prompt_key is not None else None
    if not overwrite:
        existing = [f"{p}{ext}" for p in prefixes + labels for ext in (".bin", ".idx") if os.path.exists(f"{p}{ext}")]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exist(s); pass --overwrite to replace them, or choose another --output-prefix"
            )
    total_bytes = sum(_file_size(p) for p in files)

    def on_bad(bad: BadRecord) -> None:
        if not skip_bad_lines:
            raise BadRecord(bad.source, bad.line, bad.reason + " (use --skip-bad-lines to skip such records)")
        summary.bad_skipped += 1
        if len(summary.bad_examples) < 20:
            summary.bad_examples.append(str(bad))
            log(f"skipping bad record: {bad}")

    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    read_bytes = [0]

    def produce() -> None:
        try:
            batch: list[tuple[int, tuple[str, ...]]] = []  # (key index, texts of one document: [prompt,] text)
            size = 0

            def count_bytes(n: int) -> None:
                read_bytes[0] += n

            read_keys = keys if prompt_key is None else [prompt_key, *keys]
            for rec in read_records(files, keys=read_keys, txt_mode=txt_mode, on_bad=on_bad, on_bytes=count_bytes):
                texts, prompt = (rec.texts, ()) if prompt_key is None else (rec.texts[1:], (rec.texts[0],))
                for k, text in enumerate(texts):
                    if not text or text.isspace():
                        summary.empty_skipped += 1
                        continue
                    batch.append((k, prompt + (text,)))
                    size += len(text) + len(prompt[0] if prompt else "")
                if size >= batch_chars:
                    if not _put(batches, batch, stop):
                        return
                    batch, size = [], 0
            if batch:
                _put(batches, batch, stop)
            _put(batches, _END, stop)
        except BaseException as e:  # handed to the main thread, which re-raises it
            _put(batches, e, stop)

    bar = _progress_bar(total_bytes, progress)
    start = time.perf_counter()
    reader = threading.Thread(target=produce, name="preprocess-reader", daemon=True)
    writers = [IndexedDatasetWriter(p, dtype) for p in prefixes]
    label_writers = [IndexedDatasetWriter(p, np.int32) for p in labels]  # signed, for -100
    pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="preprocess-tokenize")
    in_flight: collections.deque = collections.deque()
    empty_tokenized = 0

    def write_oldest() -> None:
        nonlocal empty_tokenized
        batch, future = in_flight.popleft()
        encoded = iter(future.result())
        for k, texts in batch:
            parts = [next(encoded) for _ in texts]
            if len(parts[-1]) == 0:
                empty_tokenized += 1  # counted apart: the reader thread updates empty_skipped
                continue
            if not label_writers:
                writers[k].add_document(parts[0], end_token=eod)
            else:
                prompt, text = parts
                writers[k].add_document(np.concatenate([np.asarray(prompt, dtype=np.int64), np.asarray(text, dtype=np.int64)]),
                                        end_token=eod)
                label = np.concatenate([np.full(len(prompt), IGNORED_LABEL, dtype=np.int64), np.asarray(text, dtype=np.int64)])
                label_writers[k].add_document(label, end_token=eod)
        summary.documents = sum(w.num_documents for w in writers)
        summary.tokens = sum(w.num_tokens for w in writers)
        if bar is not None:
            bar.update(read_bytes[0] - bar.n)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{summary.documents / elapsed:,.0f} docs/s, {summary.tokens / elapsed / 1e6:.3f} M tok/s", refresh=False)

    try:
        reader.start()
        while True:
            item = batches.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            in_flight.append((item, pool.submit(_encode, tokenizer, item, specials)))
            # The next batch encodes while the oldest is written, and the tail of one batch (its
            # longest documents) overlaps the start of the next, so all cores stay busy.
            if len(in_flight) >= IN_FLIGHT:
                write_oldest()
        while in_flight:
            write_oldest()
        empty = [k for k, w in zip(keys, writers) if w.num_documents == 0]
        if empty:
            raise ValueError(
                f"no documents to write for key(s) {', '.join(map(repr, empty))}: every record was empty or skipped "
                f"({summary.empty_skipped + empty_tokenized} empty, {summary.bad_skipped} bad); check --input and --jsonl-keys"
            )
        for w in writers + label_writers:  # every file written and synced before any of them is renamed into place
            w.prepare()
        for w in writers + label_writers:
            w.commit()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for w in writers + label_writers:
            if not w.finished:
                w.abort()
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - start
    summary.empty_skipped += empty_tokenized
    summary.input_bytes = read_bytes[0]
    summary.outputs = prefixes + labels
    return summary


def _encode(tokenizer: Tokenizer, batch: list[tuple[int, tuple[str, ...]]], specials: Optional[tuple[list[int], list[int]]]
            ) -> list[Sequence[int]]:
    """The ids of every text of `batch` in order. With `specials` (_template_specials), a prompted document
    ([prompt, text]) comes back as two parts, the document's leading special tokens (a BOS) and the prompt,
    then the text and the trailing ones (an EOS of the tokenizer's template): no special token falls
    between prompt and text."""
    if specials is None:
        return tokenizer.tokenize_batch([texts[0] for _, texts in batch])
    lead, trail = specials
    out: list[Sequence[int]] = []
    for _, (prompt, text) in batch:
        out += [lead + list(tokenizer.tokenize_plain(prompt)), list(tokenizer.tokenize_plain(text)) + trail]
    return out


def _template_specials(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens `tokenize` puts before and after a document's own ids (e.g. ([BOS], []) for Llama,
    ([], []) for GPT-NeoX's tokenizer), found by encoding a probe both ways."""
    full, plain = list(tokenizer.tokenize("a")), list(tokenizer.tokenize_plain("a"))
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise ValueError(f"{tokenizer!r}: cannot tell its special tokens from a document's ids ({full} against {plain}), "
                     "so --prompt-key cannot join prompt and text")


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless the consumer has stopped (then the reader thread just ends)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _file_size(path: str) -> int:
    return os.path.getsize(path)


def _progress_bar(total: int, enabled: Optional[bool]):
    if enabled is False:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="preprocess", disable=None if enabled is None else False, smoothing=0.1)
