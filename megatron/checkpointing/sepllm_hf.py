"""transformers model classes that keep SepLLM attention after conversion to HuggingFace.

A model trained under a SepLLM mask gives wrong outputs under full attention, so a converted SepLLM
model must not load as a plain GPTNeoXForCausalLM / LlamaForCausalLM. It gets its own model type
(`sepllm_gpt_neox`, `sepllm_llama`), whose config carries the training's SepLLM settings under
`sepllm`, and whose model class applies them at construction through `megatron.sepllm.hf`: the
SepLLM mask at prefill (prefill windows) and decoding (generate windows, per layer when configured),
or the SepLLM KV cache when a `SepCache` is passed as past_key_values.

Two ways to load a converted directory:
    import megatron.checkpointing.sepllm_hf        # registers the classes with the Auto* factories
    AutoModelForCausalLM.from_pretrained(out_dir)
or, with the repository importable but without importing it first:
    AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
(the converter writes `modeling_sepllm.py` and an `auto_map` into the directory for this).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.hf import SepLLMRuntime, build_sepllm_args
from megatron.sepllm.hf.runtime import ATTN_NAME, BASES
from megatron.sepllm.mask import FULL, attention_mode, resolve_token_ids

REMOTE_CODE_FILE = "modeling_sepllm.py"

# Settings that change the network itself rather than which keys a query sees; transformers'
# GPT-NeoX / Llama layers cannot compute them, so models trained with them cannot be converted.
UNCONVERTIBLE_SETTINGS = ("USE_BiPE", "USE_SA_SOFTMAX", "USE_SA_SOFTMAX_NO_DENO")


def check_convertible(sep_args: SepLLMArgs) -> None:
    """Raise when the model's SepLLM settings cannot be kept by a transformers model."""
    bad = [name for name in UNCONVERTIBLE_SETTINGS if getattr(sep_args, name)]
    if bad:
        raise ValueError(
            f"this model was trained with {', '.join(bad)}, which transformers' GPT-NeoX/Llama layers cannot "
            "compute; it cannot be converted to HuggingFace or run by generate.py / eval.py"
        )


def stored_settings(sep_args: SepLLMArgs) -> dict[str, Any]:
    """The SepLLM settings as written into the HF config, separator presets resolved to ids."""
    values = dataclasses.asdict(sep_args)
    values["separator_token_ids"] = resolve_token_ids(sep_args.separator_token_ids)
    values["BiPE_seps"] = resolve_token_ids(sep_args.BiPE_seps)
    return values


class SepLLMGPTNeoXConfig(GPTNeoXConfig):
    model_type = "sepllm_gpt_neox"


class SepLLMLlamaConfig(LlamaConfig):
    model_type = "sepllm_llama"


class _SepLLMAttentionMixin:
    """Installs the SepLLM runtime on a transformers causal LM right after it is built."""

    def _install_sepllm(self) -> None:
        stored = getattr(self.config, "sepllm", None)
        if not isinstance(stored, dict):
            raise ValueError(
                f"a {self.config.model_type} config needs its SepLLM settings under `sepllm` "
                "(written by tools/convert_neox_to_hf.py); this config has none"
            )
        layers = int(self.config.num_hidden_layers)
        args, _ = build_sepllm_args(dict(stored), layers=layers)
        check_convertible(args)
        base = self.config._attn_implementation
        if base == ATTN_NAME:
            base = "sdpa"
        if base not in BASES:
            raise ValueError(f"SepLLM runs on the 'sdpa' or 'eager' attention, not {base!r}; load with attn_implementation='sdpa'")
        separators = [] if attention_mode(args) == FULL else resolve_token_ids(args.separator_token_ids)
        # apply_sepllm() would check config.model_type against the plain families; the settings
        # here are the training's own, so the runtime is installed directly with them.
        # from_pretrained builds models under a meta-device context; the runtime's counters must
        # be real tensors.
        with torch.device("cpu"):
            runtime = SepLLMRuntime(self, args, separators, base).install()
        self._sepllm_runtime = runtime
        if self.config._attn_implementation != ATTN_NAME:
            raise RuntimeError(f"{type(self).__name__} could not switch its attention to SepLLM")

    @property
    def sepllm_runtime(self) -> SepLLMRuntime:
        """The installed runtime: kv_report() gives the kept-KV and attention-map ratios."""
        return self._sepllm_runtime


class SepLLMGPTNeoXForCausalLM(_SepLLMAttentionMixin, GPTNeoXForCausalLM):
    config_class = SepLLMGPTNeoXConfig

    def __init__(self, config: SepLLMGPTNeoXConfig):
        super().__init__(config)
        self._install_sepllm()


class SepLLMLlamaForCausalLM(_SepLLMAttentionMixin, LlamaForCausalLM):
    config_class = SepLLMLlamaConfig

    def __init__(self, config: SepLLMLlamaConfig):
        super().__init__(config)
        self._install_sepllm()


# arch -> (plain config class, plain model class, SepLLM config class, SepLLM model class)
CLASSES = {
    "neox": (GPTNeoXConfig, GPTNeoXForCausalLM, SepLLMGPTNeoXConfig, SepLLMGPTNeoXForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM, SepLLMLlamaConfig, SepLLMLlamaForCausalLM),
}


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM know the SepLLM model types (idempotent)."""
    for _, _, config_cls, model_cls in CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


register()


def sepllm_config(plain_config, arch: str):
    """The SepLLM variant of a plain GPTNeoXConfig / LlamaConfig (same fields, SepLLM model type)."""
    config_cls = CLASSES[arch][2]
    values = plain_config.to_dict()
    values.pop("model_type", None)
    values.pop("transformers_version", None)
    return config_cls(**values)


_REMOTE_CODE = '''"""SepLLM model classes for `trust_remote_code=True` (written by tools/convert_neox_to_hf.py).

The implementation lives in the SepLLM-NeoX repository (megatron/checkpointing/sepllm_hf.py); make it
importable first: `pip install -e <repo>` or add the repository root to PYTHONPATH.
"""
try:
    from megatron.checkpointing import sepllm_hf as _impl
except ImportError as exc:
    raise ImportError(
        "this SepLLM model needs the SepLLM-NeoX repository on the Python path "
        "(pip install -e <repo> or PYTHONPATH=<repo>), for megatron.checkpointing.sepllm_hf"
    ) from exc


class SepLLMGPTNeoXConfig(_impl.SepLLMGPTNeoXConfig):
    pass


class SepLLMGPTNeoXForCausalLM(_impl.SepLLMGPTNeoXForCausalLM):
    config_class = SepLLMGPTNeoXConfig


class SepLLMLlamaConfig(_impl.SepLLMLlamaConfig):
    pass


class SepLLMLlamaForCausalLM(_impl.SepLLMLlamaForCausalLM):
    config_class = SepLLMLlamaConfig
'''


def remote_code_auto_map(arch: str) -> dict[str, str]:
    """The config.json `auto_map` that points transformers at the remote-code file."""
    _, _, config_cls, model_cls = CLASSES[arch]
    module = Path(REMOTE_CODE_FILE).stem
    return {"AutoConfig": f"{module}.{config_cls.__name__}", "AutoModelForCausalLM": f"{module}.{model_cls.__name__}"}


def write_remote_code(out_dir: str | Path) -> Path:
    """Write the trust_remote_code module into a converted model directory."""
    path = Path(out_dir) / REMOTE_CODE_FILE
    path.write_text(_REMOTE_CODE)
    return path


def is_sepllm_model(model) -> bool:
    return isinstance(model, _SepLLMAttentionMixin)


def kv_report(model) -> Optional[dict[str, Any]]:
    """The SepLLM runtime's kept-KV report of a converted model (None for a full-attention model)."""
    runtime = getattr(model, "_sepllm_runtime", None)
    return runtime.kv_report() if runtime is not None else None
