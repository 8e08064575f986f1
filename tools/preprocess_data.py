#!/usr/bin/env python3
"""Tokenize raw text into Megatron/GPT-NeoX .bin/.idx datasets (one per JSON key).

  python tools/preprocess_data.py --input data.jsonl.zst,more.jsonl --output-prefix data/pile \\
      --tokenizer-type HFTokenizer --vocab-file data/demo/gpt-neox-20b-tokenizer.json --append-eod

writes data/pile_text_document.bin/.idx. Inputs: .jsonl, .jsonl.zst (one JSON object per line,
text under --jsonl-keys) and .txt (one document per file, or per blank-line-separated
paragraph with --txt-documents paragraph); folders and glob patterns expand to such files.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.data.document_reader import TXT_MODES, BadRecord  # noqa: E402
from megatron.data.preprocess import preprocess  # noqa: E402
from megatron.data.tokenizers import TOKENIZER_TYPES, build_tokenizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    # nargs="+": an unquoted glob arrives as many arguments after the shell expands it.
    g.add_argument("--input", required=True, nargs="+", help="Input files, folders or glob patterns (.jsonl, .jsonl.zst, .txt), comma- or space-separated.")
    g.add_argument("--jsonl-keys", nargs="+", default=["text"], help="JSON keys to tokenize; each becomes its own dataset (default: text).")
    g.add_argument("--prompt-key", default=None, help="JSON key of a prompt before each text (instruction data): documents are prompt + text, and PREFIX_<key>_label_document.bin/.idx beside them leaves the prompt out of the loss (train_label_data_paths).")
    g.add_argument("--txt-documents", choices=TXT_MODES, default="file", help="A .txt file is one document ('file', default) or one per blank-line-separated paragraph.")
    g.add_argument("--skip-bad-lines", action="store_true", help="Count and skip bad records (invalid JSON, missing key, undecodable bytes) instead of stopping at the first.")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES, help="Tokenizer type, as in GPT-NeoX configs.")
    g.add_argument("--vocab-file", default=None, help="Tokenizer file: tokenizer JSON, vocab.json, .model, or a transformers folder / .gguf for HFAutoTokenizer.")
    g.add_argument("--merge-file", default=None, help="BPE merges (GPT2BPETokenizer).")
    g.add_argument("--append-eod", action="store_true", help="Append the end-of-document token to every document (needed to pack documents for training).")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True, help="Output path prefix; writes PREFIX_<key>_document.bin/.idx.")
    g.add_argument("--overwrite", action="store_true", help="Replace existing outputs of the same prefix (refused otherwise, before any work).")
    g.add_argument("--workers", type=int, default=os.cpu_count(), help="Threads the tokenizer uses for batch encoding (default: all cores).")
    g.add_argument("--batch-mb", type=float, default=None, help="Text per tokenizer batch, in millions of characters (default: 2 per worker, between 16 and 32; memory ~100 bytes per character).")
    g.add_argument("--no-progress", action="store_true", help="No progress bar (it is shown only on a terminal anyway).")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.output_prefix.endswith(("/", os.sep)) or not os.path.basename(args.output_prefix):
        p.error(f"--output-prefix {args.output_prefix!r} names a folder; end it with a file name prefix, e.g. "
                f"{os.path.join(args.output_prefix, 'mydata')} (writes ..._text_document.bin/.idx)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # A scheduler's SIGTERM (job time limit, scancel) takes the Ctrl-C path, which deletes the
    # partial temporary outputs instead of leaving them on disk.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
        summary = preprocess(
            inputs=",".join(args.input),
            output_prefix=args.output_prefix,
            tokenizer=tokenizer,
            keys=args.jsonl_keys,
            append_eod=args.append_eod,
            skip_bad_lines=args.skip_bad_lines,
            txt_mode=args.txt_documents,
            workers=args.workers,
            batch_chars=None if args.batch_mb is None else int(args.batch_mb * 1e6),
            progress=False if args.no_progress else None,
            overwrite=args.overwrite,
            prompt_key=args.prompt_key,
        )
    except (BadRecord, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        print("no output written", file=sys.stderr)
        return 1
    except OSError as e:  # a folder without write permission, a full or read-only disk
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        print("no output written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(summary.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
