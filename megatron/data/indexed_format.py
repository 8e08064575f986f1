"""The Megatron "MMIDIDX" indexed dataset format (version 1): writing it and checking it.

A dataset is a pair of files sharing a prefix:
  PREFIX.bin  the tokens of every sequence, back to back, in the index's dtype;
  PREFIX.idx  b"MMIDIDX\\x00\\x00", version (<Q, 1), dtype code (<B), sequence count S (<Q),
              document-index count D (<Q), then S int32 sequence lengths, S int64 byte offsets
              into .bin, and D int64 document indices (sequence numbers where documents start;
              the first is 0 and the last is S).
GPT-NeoX, Megatron-LM and megatron-core (`megatron.core.datasets.indexed_dataset`) all write
and read exactly this layout; `tests/test_data_indexed_format.py` checks byte equality with
megatron-core's builder. We write it here instead of through megatron-core's builder because
importing megatron-core costs ~4.5 s on a 2-core machine, a third of the time it takes to
tokenize all of PG19, and because the writer has to be atomic, which the builder is not.
Reading for training goes through megatron-core (see `indexed_dataset.py`).

Nothing here imports torch or megatron-core.
"""
from __future__ import annotations

import array
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from megatron.atomic_io import fsync_dir, fsync_file, remove_quietly, temp_path_for

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, S, D
DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32,
    5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(t): c for c, t in DTYPE_CODES.items()}
# GPT-NeoX and megatron-core switch to int32 at this vocabulary size (not at 65536).
UINT16_VOCAB_LIMIT = 65500


class IndexedDatasetError(ValueError):
    """A .bin/.idx pair that cannot be used, with what is wrong and how to fix it."""


def data_file_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def index_file_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def token_dtype_for_vocab(vocab_size: Optional[int]) -> type:
    """uint16 when the vocabulary fits (as GPT-NeoX and megatron-core decide), else int32."""
    if vocab_size is not None and vocab_size < UINT16_VOCAB_LIMIT:
        return np.uint16
    return np.int32


class IndexedDatasetWriter:
    """Streams documents into PREFIX.bin/.idx, one sequence per document.

    Output goes to temporary files; `finalize()` fsyncs them and renames them into place, the
    .idx last, after removing any old .idx first. An interrupted run (exception, Ctrl-C, kill)
    therefore never leaves a .bin/.idx pair that looks complete. Leaving the `with` block
    without `finalize()` deletes the temporary files.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE or self.dtype.kind not in "iu":
            raise ValueError(f"token dtype must be an integer type of the MMIDIDX format, got {self.dtype}")
        self._info = np.iinfo(self.dtype)
        self.bin_path = data_file_path(prefix)
        self.idx_path = index_file_path(prefix)
        Path(self.bin_path).parent.mkdir(parents=True, exist_ok=True)
        self._tmp_bin = temp_path_for(self.bin_path)
        self._tmp_idx = temp_path_for(self.idx_path)
        self._bin = open(self._tmp_bin, "wb", buffering=1 << 23)
        self._lengths = array.array("q")
        self.num_tokens = 0
        self._done = False

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    @property
    def finished(self) -> bool:
        """True once finalized or aborted."""
        return self._done

    def add_document(self, tokens: Sequence[int] | np.ndarray, end_token: Optional[int] = None) -> None:
        """Append one document (one sequence); `end_token` (the EOD id) is appended to it if given."""
        if isinstance(tokens, np.ndarray):
            arr = tokens
            if arr.dtype != self.dtype and arr.size and (int(arr.min()) < self._info.min or int(arr.max()) > self._info.max):
                raise self._range_error()
        else:
            try:  # one conversion; numpy refuses Python ints outside the dtype's range
                arr = np.array(tokens, dtype=self.dtype)
            except OverflowError:
                raise self._range_error() from None
        if arr.ndim != 1:
            raise ValueError(f"a document must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        n = arr.size
        self._bin.write(arr.tobytes(order="C"))
        if end_token is not None:
            self._bin.write(np.array([end_token], dtype=self.dtype).tobytes())
            n += 1
        self._lengths.append(n)
        self.num_tokens += n

    def _range_error(self) -> ValueError:
        return ValueError(
            f"a token id lies outside the {self.dtype} range [{self._info.min}, {self._info.max}] of {self.bin_path}: "
            "the tokenizer's vocabulary does not fit this dtype (the dtype follows the tokenizer's vocab_size)"
        )

    def add_documents(self, docs: Iterable[Sequence[int] | np.ndarray]) -> None:
        for doc in docs:
            self.add_document(doc)

    def finalize(self) -> None:
        self.prepare()
        self.commit()

    def prepare(self) -> None:
        """Write the index and make both temporary files durable: what can fail for lack of space fails here.

        Several writers that must land together (one per JSON key) prepare all, then commit all.
        """
        self._bin.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        if lengths.size and lengths.max() > np.iinfo(np.int32).max:
            raise ValueError("a document longer than 2**31-1 tokens does not fit the MMIDIDX format")
        with open(self._tmp_idx, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            f.write(struct.pack("<Q", lengths.size))
            f.write(struct.pack("<Q", lengths.size + 1))
            f.write(lengths.astype(np.int32).tobytes())
            pointers = np.zeros(lengths.size, dtype=np.int64)
            np.cumsum(lengths[:-1] * self.dtype.itemsize, out=pointers[1:])
            f.write(pointers.tobytes())
            f.write(np.arange(lengths.size + 1, dtype=np.int64).tobytes())
        fsync_file(self._tmp_bin)
        fsync_file(self._tmp_idx)

    def commit(self) -> None:
        """Rename the prepared files into place (renames only: nothing is written)."""
        # Old .idx first: between the two renames a stale index must not pair with the new .bin.
        remove_quietly(self.idx_path)
        fsync_dir(Path(self.idx_path).parent)
        os.replace(self._tmp_bin, self.bin_path)
        os.replace(self._tmp_idx, self.idx_path)
        fsync_dir(Path(self.idx_path).parent)
        self._done = True

    def abort(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        remove_quietly(self._tmp_bin)
        remove_quietly(self._tmp_idx)
        self._done = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()


@dataclass
class IndexedFiles:
    """A checked .bin/.idx pair: the index arrays (memory-mapped) and the identity of the files."""

    prefix: str
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32 [S]
    sequence_pointers: np.ndarray  # int64 [S], byte offsets into .bin
    document_indices: np.ndarray  # int64 [D]
    num_tokens: int
    fingerprint: dict  # sizes and mtimes of both files: any change means the data changed

    @property
    def num_sequences(self) -> int:
        return int(self.sequence_lengths.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.document_indices.shape[0]) - 1

    def tokens(self) -> np.ndarray:
        """All tokens of the .bin, memory-mapped."""
        if self.num_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(data_file_path(self.prefix), dtype=self.dtype, mode="r", shape=(self.num_tokens,))


def files_fingerprint(prefix: str) -> dict:
    out = {}
    for kind, path in (("bin", data_file_path(prefix)), ("idx", index_file_path(prefix))):
        st = os.stat(path)
        out[kind] = [st.st_size, st.st_mtime_ns]
    return out


def _fail(path: str, problem: str, fix: str) -> IndexedDatasetError:
    return IndexedDatasetError(f"{path}: {problem}. {fix}")


REBUILD = "Re-create it with tools/preprocess_data.py (an interrupted or partial copy leaves files like this)."


def inspect_indexed_dataset(prefix: str | os.PathLike) -> IndexedFiles:
    """Check a .bin/.idx pair thoroughly (cost O(number of sequences)) and return its index.

    Raises IndexedDatasetError naming the file, the problem and the fix for: a missing file,
    a foreign or unknown format, an unknown or non-integer dtype, a truncated or padded .idx,
    inconsistent offsets, a truncated .bin, and a .bin whose size fits another dtype than the
    one its .idx declares.
    """
    prefix = str(prefix)
    bin_path, idx_path = data_file_path(prefix), index_file_path(prefix)
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            hint = ""
            if prefix.endswith((".bin", ".idx")):
                hint = f" Give the prefix without the extension ({prefix[:-4]!r})."
            raise _fail(path, "file not found", f"Data paths are prefixes: PREFIX.bin and PREFIX.idx must both exist (tools/preprocess_data.py writes them).{hint}")
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        if head.startswith(b"TNTIDX"):
            raise _fail(idx_path, "this is the legacy 'cached' indexed format", "Only the mmap format (MMIDIDX) is supported; re-tokenize with tools/preprocess_data.py.")
        raise _fail(idx_path, f"not a Megatron MMIDIDX index (starts with {head[:9]!r})", REBUILD)
    if len(head) < HEADER_BYTES:
        raise _fail(idx_path, f"truncated header ({idx_size} bytes)", REBUILD)
    version = struct.unpack_from("<Q", head, len(MAGIC))[0]
    if version != VERSION:
        raise _fail(idx_path, f"index version {version}, only version {VERSION} is supported", REBUILD)
    code = head[len(MAGIC) + 8]
    if code not in DTYPE_CODES:
        raise _fail(idx_path, f"unknown dtype code {code} (valid: {sorted(DTYPE_CODES)})", REBUILD)
    dtype = np.dtype(DTYPE_CODES[code])
    if dtype.kind not in "iu":
        raise _fail(idx_path, f"dtype {dtype} is not an integer type, so this does not hold token ids", "Point the data path at a tokenized dataset.")
    n_seq, n_doc = struct.unpack_from("<QQ", head, len(MAGIC) + 9)
    expected = HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
    if idx_size != expected:
        if idx_size == expected + n_seq:
            problem = "a multimodal index (it carries per-sequence modes), which GPT training cannot use"
            raise _fail(idx_path, problem, "Use a text-only dataset.")
        what = "truncated" if idx_size < expected else "longer than its header says"
        raise _fail(idx_path, f"{what}: the header promises {n_seq} sequences and {n_doc} document indices ({expected} bytes), the file has {idx_size} bytes", REBUILD)
    if n_doc < 1:
        raise _fail(idx_path, "no document indices (a valid index has at least [0])", REBUILD)
    lengths = np.memmap(idx_path, dtype=np.int32, mode="r", offset=HEADER_BYTES, shape=(n_seq,)) if n_seq else np.zeros(0, np.int32)
    pointers = np.memmap(idx_path, dtype=np.int64, mode="r", offset=HEADER_BYTES + 4 * n_seq, shape=(n_seq,)) if n_seq else np.zeros(0, np.int64)
    docs = np.memmap(idx_path, dtype=np.int64, mode="r", offset=HEADER_BYTES + 12 * n_seq, shape=(n_doc,))
    if n_seq and lengths.min() < 0:
        raise _fail(idx_path, "negative sequence length", REBUILD)
    if docs[0] != 0 or docs[-1] != n_seq or (n_doc > 1 and np.any(np.diff(docs) < 0)):
        raise _fail(idx_path, f"document indices must rise from 0 to the sequence count {n_seq} (found {int(docs[0])} .. {int(docs[-1])})", REBUILD)
    itemsize = dtype.itemsize
    ends = np.cumsum(lengths, dtype=np.int64) * itemsize
    if n_seq and (pointers[0] != 0 or np.any(pointers[1:] != ends[:-1])):
        raise _fail(idx_path, f"sequence offsets do not match the sequence lengths for {dtype} tokens", REBUILD)
    num_tokens = int(ends[-1] // itemsize) if n_seq else 0
    bin_size = os.path.getsize(bin_path)
    if bin_size != num_tokens * itemsize:
        problem = f"holds {bin_size} bytes but {idx_path} describes {num_tokens} {dtype} tokens ({num_tokens * itemsize} bytes)"
        if num_tokens and bin_size % num_tokens == 0 and bin_size // num_tokens in (1, 2, 4, 8) and bin_size // num_tokens != itemsize:
            problem += f": a dtype mismatch, the .bin looks like it was written with {bin_size // num_tokens}-byte tokens"
            fix = "Write .bin and .idx in one run of tools/preprocess_data.py (do not mix files of different runs)."
        elif bin_size < num_tokens * itemsize:
            problem += " (truncated)"
            fix = REBUILD
        else:
            fix = "The .bin and .idx come from different runs; " + REBUILD
        raise _fail(bin_path, problem, fix)
    return IndexedFiles(prefix, dtype, lengths, pointers, docs, num_tokens, files_fingerprint(prefix))


def max_token_id(files: IndexedFiles, chunk: int = 1 << 26) -> int:
    """Largest token id in the .bin (-1 when empty); a streaming pass over the file."""
    tokens = files.tokens()
    best = -1
    for start in range(0, tokens.shape[0], chunk):
        best = max(best, int(tokens[start:start + chunk].max()))
    return best
