#!/usr/bin/env python3
"""Print the token ids of SepLLM's separators for a tokenizer, with their decoded strings.

  python tools/sepllm/get_separator_ids.py --tokenizer-type HFTokenizer \\
      --vocab-file data/demo/gpt-neox-20b-tokenizer.json [--extended]

The base separators are '.', ',', '?', '!', ';', ':', ' ', '\\t', '\\n' (upstream SepLLM's list and
order); --extended adds the space-prefixed punctuation and whitespace runs that upstream also
tried (' .', ' ,', ..., ' \\n', '  ', '   '). The last line is a `separator_token_ids` value to
paste into a config; when it equals a named preset (e.g. 'pythia') the preset is named too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.data.tokenizers import TOKENIZER_TYPES, build_tokenizer  # noqa: E402
from megatron.sepllm.separators import matching_presets, separator_ids  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--extended", action="store_true", help="Also the space-prefixed punctuation and whitespace runs.")
    args = p.parse_args(argv)
    try:
        tok = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pairs = separator_ids(tok, args.extended)
    print(f"{'separator':<12}{'id':>8}  decoded")
    for s, i in pairs:
        decoded = repr(tok.detokenize([i])) if i is not None else "-- not a single token; left out"
        print(f"{json.dumps(s):<12}{'' if i is None else i:>8}  {decoded}")
    ids = [i for _, i in pairs if i is not None]
    presets = matching_presets(ids)
    print(f"separator_token_ids: {json.dumps(ids)}" + (f"   # preset {', '.join(repr(n) for n in presets)}" if presets else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
