"""Reading raw documents for preprocessing: .jsonl, .jsonl.zst and plain .txt files.

Every document carries where it came from (file and line), so a bad record is reported as
`FILE:LINE: what is wrong`. Bad records raise BadRecord; the caller decides whether that stops
the run or is counted and skipped.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

JSONL_SUFFIXES = (".jsonl", ".json")
ZST_SUFFIXES = (".jsonl.zst", ".json.zst")
TXT_SUFFIXES = (".txt",)
TXT_MODES = ("file", "paragraph")
# A paragraph break: one or more lines holding nothing but whitespace (\r\n line ends too).
_PARAGRAPH_BREAK = re.compile(rb"\r?\n(?:[ \t\r\f\v]*\n)+")
_FINAL_LINE_END = re.compile(rb"\r?\n\Z")


class BadRecord(ValueError):
    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass
class Record:
    """One input record: its text under each requested key, and where it starts."""

    texts: list[str]
    source: str
    line: int


def input_kind(path: str) -> str:
    name = path.lower()
    if name.endswith(ZST_SUFFIXES):
        return "jsonl.zst"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TXT_SUFFIXES):
        return "txt"
    raise ValueError(f"{path}: unsupported input type; use .jsonl, .jsonl.zst or .txt files")


def expand_inputs(spec: str | Sequence[str]) -> list[str]:
    """Files named by a comma-separated list of files, folders (their supported files) and globs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if os.path.isdir(item):
            found = sorted(p for p in (os.path.join(item, n) for n in os.listdir(item) if _supported(n)) if os.path.isfile(p))
            if not found:
                raise ValueError(f"{item}: folder holds no .jsonl, .jsonl.zst or .txt files")
            files += found
        elif os.path.isfile(item):
            input_kind(item)
            files.append(item)
        else:
            matched = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matched:
                raise FileNotFoundError(f"input {item!r} does not exist (give files, folders or glob patterns, comma-separated)")
            for p in matched:
                input_kind(p)
            files += matched
    if not files:
        raise ValueError("no input files given")
    return files


def _supported(name: str) -> bool:
    try:
        input_kind(name)
        return True
    except ValueError:
        return False


def read_records(
    paths: Sequence[str],
    *,
    keys: Sequence[str],
    txt_mode: str = "file",
    on_bad: Callable[[BadRecord], None],
    on_bytes: Optional[Callable[[int], None]] = None,
) -> Iterator[Record]:
    """Records of all `paths` in order. `on_bad` gets each bad record (raise in it to stop);
    `on_bytes` gets the number of input bytes consumed since its last call (for progress)."""
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt mode must be one of {TXT_MODES}, got {txt_mode!r}")
    progress = on_bytes or (lambda n: None)
    for path in paths:
        kind = input_kind(path)
        if kind == "txt":
            if list(keys) != ["text"]:
                raise ValueError(f"{path}: plain-text inputs have only the key 'text', but --jsonl-keys asks for {list(keys)}")
            yield from _read_txt(path, txt_mode, on_bad, progress)
        else:
            yield from _read_jsonl(path, kind == "jsonl.zst", keys, on_bad, progress)


def _read_jsonl(path, compressed, keys, on_bad, progress) -> Iterator[Record]:
    with open(path, "rb") as raw:
        lines = _zstd_lines(raw, progress) if compressed else _plain_lines(raw, progress)
        line_no = 0
        try:
            for line_no, line in enumerate(lines, start=1):
                record = _parse_json_line(line, keys, path, line_no, on_bad)
                if record is not None:
                    yield record
        except _CorruptStream as e:
            on_bad(BadRecord(path, line_no + 1, f"corrupt zstd stream ({e}); the rest of the file is unreadable"))


class _CorruptStream(Exception):
    pass


def _plain_lines(raw, progress) -> Iterator[bytes]:
    for line in raw:
        progress(len(line))
        yield line


def _zstd_lines(raw, progress, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a .zst file of one or more frames; a truncated or damaged stream raises _CorruptStream."""
    import zstandard

    # zstd --long=31 frames need a 2 GiB window; the library's default limit (128 MiB) calls them corrupt
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
    dobj, in_frame, pending = dctx.decompressobj(), False, bytearray()  # bytearray: cheap appends for long lines
    while True:
        chunk = raw.read(chunk_size)
        progress(len(chunk))
        if not chunk:
            break
        while chunk:
            try:
                out = dobj.decompress(chunk)
            except zstandard.ZstdError as e:
                raise _CorruptStream(str(e)) from None
            in_frame = True
            pending += out
            if b"\n" in out:
                *complete, rest = pending.split(b"\n")
                pending = bytearray(rest)
                for line in complete:
                    yield bytes(line) + b"\n"
            if dobj.eof:  # the frame ended; what follows is the next frame
                chunk, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
            else:
                chunk = b""
    if in_frame:
        raise _CorruptStream("the file ends inside a compressed frame (truncated)")
    if pending:
        yield bytes(pending)


def _parse_json_line(line: bytes, keys, path, line_no, on_bad) -> Optional[Record]:
    if not line.strip():
        return None  # blank lines separate nothing in JSON Lines; not a record
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        on_bad(BadRecord(path, line_no, f"undecodable bytes (not UTF-8) at byte {e.start} of the line"))
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        on_bad(BadRecord(path, line_no, f"invalid JSON: {e.msg.removesuffix(' at')} (column {e.colno})"))
        return None
    if not isinstance(obj, dict):
        on_bad(BadRecord(path, line_no, f"expected a JSON object, got {type(obj).__name__}"))
        return None
    texts = []
    for k in keys:
        if k not in obj:
            on_bad(BadRecord(path, line_no, f"missing key {k!r} (keys present: {sorted(obj)[:10]})"))
            return None
        if not isinstance(obj[k], str):
            on_bad(BadRecord(path, line_no, f"key {k!r} holds {type(obj[k]).__name__}, expected a string"))
            return None
        # JSON allows escaped lone surrogates; no tokenizer can encode them
        at = _unpaired_surrogate(obj[k]) if b"\\ud" in line or b"\\uD" in line else None
        if at is not None:
            on_bad(BadRecord(path, line_no, f"key {k!r} holds an unpaired surrogate escape (\\u{ord(obj[k][at]):04x} at "
                                            f"character {at}), which is not Unicode text"))
            return None
        texts.append(obj[k])
    return Record(texts, path, line_no)


def _unpaired_surrogate(text: str) -> Optional[int]:
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def _read_txt(path, mode, on_bad, progress) -> Iterator[Record]:
    with open(path, "rb") as f:
        data = f.read()
    progress(len(data))
    if mode == "file":
        text = _decode(data, path, 1, on_bad)
        if text is not None:
            yield Record([text], path, 1)
        return
    line, pos = 1, 0
    for m in _PARAGRAPH_BREAK.finditer(data):
        yield from _paragraph(data[pos:m.start()], path, line, on_bad)
        line += data.count(b"\n", pos, m.end())
        pos = m.end()
    # the file's final line end belongs to no paragraph, as the breaks between paragraphs belong to none
    yield from _paragraph(_FINAL_LINE_END.sub(b"", data[pos:]), path, line, on_bad)


def _paragraph(block: bytes, path, line, on_bad) -> Iterator[Record]:
    if not block.strip():
        return  # blank space around paragraphs separates documents; it is not one
    text = _decode(block, path, line, on_bad)
    if text is not None:
        yield Record([text], path, line)


def _decode(data: bytes, path, first_line, on_bad) -> Optional[str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        on_bad(BadRecord(path, bad_line, f"undecodable bytes (not UTF-8) at byte {column} of the line"))
        return None
