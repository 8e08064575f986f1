"""`arg()`: a dataclass field with its one-line documentation attached.

Every config field in `megatron.neox_arguments` is declared as
    name: type = arg(default, "One-line doc.")
so the loader, the validation messages and `--help`-style listings read the doc from
`dataclasses.fields(group)[i].metadata["doc"]`.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any


def arg(default: Any, doc: str, **metadata: Any) -> Any:
    """A dataclass field with default `default` and one-line doc `doc`.

    Mutable defaults (lists, dicts) are copied per instance.
    """
    meta = {"doc": doc, **metadata}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
