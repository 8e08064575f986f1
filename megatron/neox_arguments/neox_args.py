"""NeoXArgs: a whole run's configuration, loaded strictly from GPT-NeoX-style YAML files.

    args = NeoXArgs.from_files(["configs/pythia/160M.yml", "configs/local_setup.yml"])

Files merge in order (a later file replaces a key's whole value, mappings included); `-` and
`_` in keys are the same. Unknown keys, wrong types, bad values and contradictions raise one
ConfigError listing every problem with the file and line it came from. Loading touches no
GPU and no process group.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from megatron.neox_arguments.checkpoint import CheckpointArgs
from megatron.neox_arguments.coercion import TypeMismatch, coerce, describe_value
from megatron.neox_arguments.data import DataArgs
from megatron.neox_arguments.deepspeed_config import build_deepspeed_config
from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.findings import Findings
from megatron.neox_arguments.generation import GenerationArgs
from megatron.neox_arguments.groups import FIELDS, GROUPS
from megatron.neox_arguments.launcher import LauncherArgs
from megatron.neox_arguments.logging_args import LoggingArgs
from megatron.neox_arguments.lr_schedule import LRArgs
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.not_acted_on import NOT_ACTED_ON, RUN_DIFFERENTLY, UNSUPPORTED_KEYS, UNSUPPORTED_VALUES
from megatron.neox_arguments.optimizer import OptimizerArgs
from megatron.neox_arguments.parallel import ParallelArgs
from megatron.neox_arguments.precision import PrecisionArgs
from megatron.neox_arguments.readiness import check_ready
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.neox_arguments.tokenizer import TokenizerArgs
from megatron.neox_arguments.training import TrainingArgs
from megatron.neox_arguments.validation import resolve_and_validate
from megatron.atomic_io import atomic_write_text
from megatron.neox_arguments.yaml_io import dump_yaml, load_config_file


def _underscored(value: Any) -> Any:
    """`value` with `-` read as `_` in the keys of every nested mapping (DeepSpeed's keys have no `-`)."""
    if isinstance(value, dict):
        return {(k.replace("-", "_") if isinstance(k, str) else k): _underscored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_underscored(v) for v in value]
    return value


@dataclass
class NeoXArgs:
    """All settings of a run, one typed dataclass per group (see groups.GROUPS)."""

    model: ModelArgs = field(default_factory=ModelArgs)
    sepllm: SepLLMArgs = field(default_factory=SepLLMArgs)
    parallel: ParallelArgs = field(default_factory=ParallelArgs)
    training: TrainingArgs = field(default_factory=TrainingArgs)
    optimizer: OptimizerArgs = field(default_factory=OptimizerArgs)
    lr: LRArgs = field(default_factory=LRArgs)
    precision: PrecisionArgs = field(default_factory=PrecisionArgs)
    data: DataArgs = field(default_factory=DataArgs)
    tokenizer: TokenizerArgs = field(default_factory=TokenizerArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    logging: LoggingArgs = field(default_factory=LoggingArgs)
    launcher: LauncherArgs = field(default_factory=LauncherArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    source_files: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike], overrides: Optional[Mapping[str, Any]] = None) -> "NeoXArgs":
        """Load, merge (later wins) and validate config files, then `overrides`; raises ConfigError."""
        paths = [str(p) for p in paths]
        if not paths:
            raise ConfigError("no config file given; pass one or more YAML files, e.g. configs/demo.yml")
        raw: dict[str, tuple[Any, str]] = {}
        problems: list[str] = []
        for path in paths:
            try:
                data, lines = load_config_file(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            for key, value in data.items():
                raw[key.replace("-", "_")] = (value, f"{path}:{lines.get(key, '?')}")
        for key, value in (overrides or {}).items():
            raw[key.replace("-", "_")] = (value, "overrides")
        if problems:
            raise ConfigError(problems)
        return cls._build(raw, source_files=paths)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "dict") -> "NeoXArgs":
        """Validate a flat {key: value} mapping as if it were one config file named `source`."""
        return cls._build({k.replace("-", "_"): (v, source) for k, v in values.items()}, source_files=[])

    @classmethod
    def _build(cls, raw: dict[str, tuple[Any, str]], source_files: list[str]) -> "NeoXArgs":
        f = Findings(sources={k: where for k, (_, where) in raw.items()})
        per_group: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        ignored_defaults: list[str] = []
        for key, (value, where) in raw.items():
            spec = FIELDS.get(key)
            if spec is None:
                if key in UNSUPPORTED_KEYS:
                    default, reason = UNSUPPORTED_KEYS[key]
                    if value == default:
                        ignored_defaults.append(key)
                    else:
                        f.problem(f"{where}: `{key}` is not supported yet ({reason}); remove it or set it to {default!r}")
                    continue
                f.problem(f"{where}: unknown key `{key}`{_suggestion(key)}")
                continue
            try:
                value = coerce(value, spec.hint)
            except TypeMismatch as exc:
                f.problem(f"{where}: `{key}` must be {exc.expected}, got {describe_value(value)}")
                continue
            if isinstance(value, dict):  # the DeepSpeed-style mappings: `-` and `_` are one key inside them too
                value = _underscored(value)
            if spec.choices is not None and value is not None:
                value = _canonical_choice(value, spec.choices)
                if value not in spec.choices:
                    f.problem(f"{where}: `{key}` must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
                    continue
            reason = UNSUPPORTED_VALUES[key].get(value) if key in UNSUPPORTED_VALUES else None
            if reason is not None:
                f.problem(f"{where}: `{key}: {value}` is not supported yet: {reason}")
                continue
            per_group[spec.group][key] = value
        if f.problems:
            raise ConfigError(f.problems)

        args = cls(**{g: GROUPS[g](**values) for g, values in per_group.items()}, source_files=source_files, sources=f.sources)
        resolve_and_validate(args, f)
        if f.problems:
            raise ConfigError(f.problems)
        args.notices = _compatibility_notices(args, ignored_defaults) + f.notices
        if _is_rank_zero():
            for line in args.notices:
                print(f"config notice: {line}", flush=True)
        return args

    # ------------------------------------------------------------------ checks for one task
    def validate_for(self, task: str) -> None:
        """Check what `task` (train, generate or eval) needs beyond a valid config: data, tokenizer files, ...

        Run it before starting processes; raises ConfigError naming what to set.
        """
        problems = check_ready(self, task)
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ derived views
    def deepspeed_config(self, dp_world_size: int) -> dict[str, Any]:
        """Config dict for deepspeed.initialize (batch sizes, clipping, ZeRO, fp16/bf16, logging; no optimizer)."""
        return build_deepspeed_config(self, dp_world_size)

    def to_dict(self) -> dict[str, Any]:
        """Every key with its resolved value, flat and in group order (the YAML layout)."""
        out: dict[str, Any] = {}
        for group in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML that NeoXArgs.from_files reads back to an equal config."""
        header = "# Resolved config"
        if self.source_files:
            header += " from " + ", ".join(self.source_files)
        return header + "\n" + dump_yaml(self.to_dict())

    def save_yaml(self, path: str | os.PathLike) -> Path:
        """Write to_yaml() to `path` atomically (a crash leaves the old file or the new one)."""
        atomic_write_text(path, self.to_yaml())
        return Path(path)


# Names users carry over from other trainers for a setting that lives inside a mapping here.
_LR_HINT = "the peak learning rate is optimizer.params.lr, e.g. optimizer: {type: Adam, params: {lr: 0.0006}}"
_NESTED_SETTINGS = {
    "lr": _LR_HINT,
    "learning_rate": _LR_HINT,
    "zero_stage": "the ZeRO stage is zero_optimization.stage, e.g. zero_optimization: {stage: 1}",
}


def _suggestion(key: str) -> str:
    if key in _NESTED_SETTINGS:
        return f"; {_NESTED_SETTINGS[key]}"
    known = list(FIELDS) + list(UNSUPPORTED_KEYS)
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return f"; did you mean `{by_lower[key.lower()]}`? (keys are case-sensitive)"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        name = by_lower.get(close[0], close[0])
        return f"; did you mean `{name}`?"
    return "; see megatron/neox_arguments/ for the valid keys"


def _canonical_choice(value: Any, choices: tuple) -> Any:
    # GPT-NeoX compares choices case-insensitively; keep the canonical spelling.
    if isinstance(value, str):
        for choice in choices:
            if isinstance(choice, str) and choice.lower() == value.lower():
                return choice
    return value


def _compatibility_notices(args: NeoXArgs, ignored_defaults: list[str]) -> list[str]:
    notices = []
    values = args.to_dict()
    by_reason: dict[str, list[str]] = {}
    for key, reason in NOT_ACTED_ON.items():
        if key in args.sources and values[key] != FIELDS[key].default():
            by_reason.setdefault(reason, []).append(key)
    for key in ignored_defaults:
        by_reason.setdefault(UNSUPPORTED_KEYS[key][1] + ", left at its default", []).append(key)
    if by_reason:
        notices.append("accepted but not acted on: " + "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in by_reason.items()))
    for key, (when, message) in RUN_DIFFERENTLY.items():
        if when(values[key]):
            notices.append(f"{key}: {values[key]}: {message}")
    return notices


def _is_rank_zero() -> bool:
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True
