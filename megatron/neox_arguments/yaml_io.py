"""Reading and writing config YAML: YAML 1.2 floats, duplicate-key detection, atomic writes.

PyYAML follows YAML 1.1, where `1e-5` (no dot) and `1.0e5` (no exponent sign) are strings.
GPT-NeoX configs write learning rates that way, so both the loader and the dumper get a
resolver that reads such scalars as floats; the dumper needs it too, so that a *string*
like "1e-5" is written quoted and reads back as a string.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from megatron.neox_arguments.errors import ConfigError

_FLOAT_WITHOUT_DOT_OR_SIGN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$""",
    re.X,
)
_FLOAT_FIRST_CHARS = list("-+0123456789.")


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float and rejects duplicate keys (merge keys, `<<:`, work as in YAML)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged below, overridable by design
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                key = key.replace("-", "_")
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key `{key}` is also set on line {seen[key] + 1} "
                    "of the same mapping (`-` and `_` spell the same key); keep one of them"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper whose quoting agrees with ConfigLoader's float rule."""


for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT_OR_SIGN, _FLOAT_FIRST_CHARS)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Double quotes keep control characters (prompt_end: "\n") visible and on one line.
    style = '"' if any(c in value for c in "\n\r\t") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


ConfigDumper.add_representer(str, _represent_str)


def load_config_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """The top-level mapping of a config file and the line (1-based) of each top-level key.

    Raises ConfigError naming the file for a missing file, bad YAML or a non-mapping document.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; pass the YAML files in it, e.g. {str(path / 'NAME.yml')!r}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a regular file; pass a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (paths are relative to {os.getcwd()})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); is it a YAML file?") from exc
    loader = ConfigLoader(text)
    loader.name = str(path)  # YAML error marks name the file instead of "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"the file must hold one mapping of `key: value` pairs, found a {node.tag.rsplit(':', 1)[-1]}")
        lines = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[key_node.value] = key_node.start_mark.line + 1
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None
    finally:
        loader.dispose()
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is not a string; config keys are names like `num_layers`")
    return data, lines


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text for `data`, keys in the given order, readable by load_config_file."""
    return yaml.dump(data, Dumper=ConfigDumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
