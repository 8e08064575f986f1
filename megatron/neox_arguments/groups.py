"""The config groups and a flat index of their keys: one key belongs to exactly one group."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from megatron.neox_arguments.checkpoint import CheckpointArgs
from megatron.neox_arguments.data import DataArgs
from megatron.neox_arguments.generation import GenerationArgs
from megatron.neox_arguments.launcher import LauncherArgs
from megatron.neox_arguments.logging_args import LoggingArgs
from megatron.neox_arguments.lr_schedule import LRArgs
from megatron.neox_arguments.model import ModelArgs
from megatron.neox_arguments.optimizer import OptimizerArgs
from megatron.neox_arguments.parallel import ParallelArgs
from megatron.neox_arguments.precision import PrecisionArgs
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.neox_arguments.tokenizer import TokenizerArgs
from megatron.neox_arguments.training import TrainingArgs

# Group attribute name on NeoXArgs -> dataclass, in the order the resolved YAML lists them.
GROUPS: dict[str, type] = {
    "model": ModelArgs,
    "sepllm": SepLLMArgs,
    "parallel": ParallelArgs,
    "training": TrainingArgs,
    "optimizer": OptimizerArgs,
    "lr": LRArgs,
    "precision": PrecisionArgs,
    "data": DataArgs,
    "tokenizer": TokenizerArgs,
    "checkpoint": CheckpointArgs,
    "logging": LoggingArgs,
    "launcher": LauncherArgs,
    "generation": GenerationArgs,
}


@dataclass(frozen=True)
class FieldSpec:
    """One config key: its group, annotation, default, documentation and allowed values."""

    key: str
    group: str
    hint: Any
    doc: str
    choices: tuple | None
    field: dataclasses.Field

    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def _index() -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    for group, cls in GROUPS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in fields:
                raise RuntimeError(f"config key {f.name!r} is declared in both {fields[f.name].group} and {group}")
            if "doc" not in f.metadata:
                raise RuntimeError(f"config key {group}.{f.name} has no doc; declare it with arg(default, doc)")
            fields[f.name] = FieldSpec(f.name, group, hints[f.name], f.metadata["doc"], f.metadata.get("choices"), f)
    return fields


FIELDS: dict[str, FieldSpec] = _index()
