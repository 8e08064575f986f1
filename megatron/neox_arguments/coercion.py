"""Checking a config value against a field's type annotation, with messages naming the type.

Accepted conversions (and nothing else): an int where a float is expected; a float with an
integral value (`5e8`) where an int is expected; the string "None" where the field is
optional and cannot hold a string (upstream SepLLM configs write `'None'` for null).
"""
from __future__ import annotations

import types
import typing
from typing import Any, Union


class TypeMismatch(Exception):
    """The value does not fit the annotation; `expected` describes what would."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _arms(hint: Any) -> tuple | None:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(hint)
    return None


def describe(hint: Any) -> str:
    """A phrase naming what `hint` accepts, e.g. 'an integer or null'."""
    arms = _arms(hint)
    if arms is not None:
        return " or ".join(describe(a) for a in arms)
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any value"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin is list:
        if args and args[0] is not Any:
            return f"a list of {_plural(describe(args[0]))}"
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _plural(phrase: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}.get(phrase, phrase)


def coerce(value: Any, hint: Any) -> Any:
    """`value` converted to fit `hint`; raises TypeMismatch when it cannot."""
    arms = _arms(hint)
    if arms is not None:
        if value is None and type(None) in arms:
            return None
        if value == "None" and type(None) in arms and str not in arms:
            return None
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return coerce(value, arm)
            except TypeMismatch:
                pass
        raise TypeMismatch(describe(hint))
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise TypeMismatch("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeMismatch("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeMismatch("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeMismatch("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch("a string")
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch(describe(hint))
        if not args or args[0] is Any:
            return list(value)
        try:
            return [coerce(v, args[0]) for v in value]
        except TypeMismatch:
            raise TypeMismatch(describe(hint)) from None
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeMismatch("a mapping")
    raise TypeError(f"config fields cannot be annotated {hint!r}")


def describe_value(value: Any) -> str:
    """How a wrong value is shown in messages: its YAML type and the value itself."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"
