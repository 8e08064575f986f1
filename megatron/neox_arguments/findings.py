"""Findings: the problems and notices one validation pass collects, with where each key came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Findings:
    """Collects problems (fatal) and notices (printed) while a config is validated.

    `sources` maps a key to where its value was set ("configs/a.yml:12", "overrides"); keys
    missing from it have their default value.
    """

    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def key(self, name: str, value: Any = None, show_value: bool = True) -> str:
        """`name: value (set in a.yml:3)` or `name: value (default)`, for messages."""
        where = self.sources.get(name)
        origin = f"set in {where}" if where else "default"
        shown = f": {_yaml_repr(value)}" if show_value else ""
        return f"`{name}{shown}` ({origin})"

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def notice(self, message: str) -> None:
        self.notices.append(message)

    def is_set(self, name: str) -> bool:
        return name in self.sources


def _yaml_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
