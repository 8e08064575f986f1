"""Training-free SepLLM settings: upstream YAML files and keyword arguments -> SepLLMArgs.

Upstream's training-free configs (sepllm-trainingfree-configs/*.yml) load as they are; keyword
arguments override single keys with the same (upstream) names. `mode=` is a shortcut for the
upstream flags: "sepllm", "streamingllm", "fixllm" (with `fixed_interval=k`) or "vanilla".
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import yaml

from megatron.neox_arguments.coercion import TypeMismatch, coerce, describe_value
from megatron.neox_arguments.groups import FIELDS
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.mask import FIXLLM, FULL, SEPLLM, STREAMING, attention_mode

MODES = {"sepllm": SEPLLM, "streamingllm": STREAMING, "fixllm": FIXLLM, "vanilla": FULL}
_FIELDS = {f.name for f in dataclasses.fields(SepLLMArgs)}


def _clean(value: Any) -> Any:
    # Upstream writes `None` in its YAML files, which YAML reads as the string "None".
    if isinstance(value, str) and value.strip() in ("None", "none", "null"):
        return None
    return value


def load_sepllm_yaml(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of an upstream training-free YAML file (unknown keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SepLLM config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of SepLLM settings, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown SepLLM settings {unknown}; known settings: {sorted(_FIELDS)}")
    return {k: _clean(v) for k, v in data.items()}


def build_sepllm_args(config: Optional[str | Path | SepLLMArgs | dict] = None, *, layers: Optional[int] = None,
                      mode: Optional[str] = None, fixed_interval: Optional[int] = None,
                      **settings: Any) -> tuple[SepLLMArgs, set[str]]:
    """SepLLMArgs from a YAML path / SepLLMArgs / dict plus keyword overrides (upstream names).

    With `layers` (the model's layer count) the settings are also validated against the model,
    and `fixed_interval=k` sets FixLLM's interval of every layer. Returns the args and the names of
    the settings given explicitly (a YAML key or a keyword), so callers can tell an explicit
    separator list from the dataclass default.
    """
    if isinstance(config, SepLLMArgs):
        values = dataclasses.asdict(config)
        given = set(_FIELDS)
    elif isinstance(config, dict):
        values = {k: _clean(v) for k, v in config.items()}
        given = set(values)
    elif config is None:
        values, given = {}, set()
    else:
        values = load_sepllm_yaml(config)
        given = set(values)
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown SepLLM settings {unknown}; known settings: {sorted(_FIELDS)} (plus mode=, fixed_interval=)")
    unknown_cfg = sorted(set(values) - _FIELDS)
    if unknown_cfg:
        raise ValueError(f"unknown SepLLM settings {unknown_cfg}; known settings: {sorted(_FIELDS)}")
    values.update({k: _clean(v) for k, v in settings.items()})
    given |= set(settings)
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is unknown; choose one of {sorted(MODES)}")
        values["USE_ORIGINAL_FULL_ATTEN"] = mode == "vanilla"
        values["USE_FIXED_SEP_INTERVALs"] = mode == "fixllm"
        values["streamingLLM"] = mode == "streamingllm"
        given |= {"USE_ORIGINAL_FULL_ATTEN", "USE_FIXED_SEP_INTERVALs", "streamingLLM"}
    if fixed_interval is not None:
        if layers is None:
            raise ValueError("fixed_interval needs the model's layer count (layers=)")
        _positive("fixed_interval", fixed_interval)
        values["fixed_sep_intervals_list"] = [int(fixed_interval)] * layers
        given.add("fixed_sep_intervals_list")
    args = SepLLMArgs(**_typed(values))
    if layers is not None:
        validate_for_model(args, layers)
    return args, given


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """The values converted to their fields' types as NeoXArgs loading does: a quoted 'False' or an
    lm-eval `sepllm_X=no` is an error naming the setting, never a truthy string."""
    out = {}
    for key, value in values.items():
        try:
            out[key] = coerce(value, FIELDS[key].hint)
        except TypeMismatch as exc:
            raise ValueError(f"SepLLM setting {key} must be {exc.expected}, got {describe_value(value)}") from None
    return out


def validate_for_model(args: SepLLMArgs, layers: int) -> SepLLMArgs:
    """Check the settings against a model with `layers` layers (clear errors naming the setting)."""
    if args.Layer_num is not None and int(args.Layer_num) != layers:
        raise ValueError(f"Layer_num is {args.Layer_num} but the model has {layers} layers; set Layer_num={layers} (or None)")
    if args.prefill_k or args.generate_k:
        raise ValueError("prefill_k and generate_k are deprecated upstream options and must be 0")
    for flag in ("USE_BiPE", "USE_SA_SOFTMAX", "USE_SA_SOFTMAX_NO_DENO"):
        if getattr(args, flag):
            raise ValueError(f"{flag} needs training from scratch and cannot be applied to a pretrained model; set it to False")
    for name in ("prefill_local_window_size", "generate_local_window_size"):
        _positive(name, getattr(args, name))
    if args.init_tok_max_idx < -1:
        raise ValueError(f"init_tok_max_idx must be >= -1 (-1 keeps no initial token), got {args.init_tok_max_idx}")
    for flag, name in (("USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS", "prefill_loc_win_size_list"),
                       ("USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS", "generate_win_loc_size_list")):
        if getattr(args, flag):
            _per_layer(name, getattr(args, name), layers)
    if attention_mode(args) == FIXLLM:
        _per_layer("fixed_sep_intervals_list", args.fixed_sep_intervals_list, layers)
    return args


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _per_layer(name: str, values: Any, layers: int) -> None:
    if not isinstance(values, (list, tuple)) or len(values) != layers:
        got = len(values) if isinstance(values, (list, tuple)) else values
        raise ValueError(f"{name} needs one value per layer ({layers} for this model), got {got!r}")
    for v in values:
        _positive(f"every entry of {name}", v)
