"""The pieces typed settings are made of: `Component` (a part picked by name, with its parameters),
field helpers that record what a field means when left unset or which registry it names, the
bounds a field's values must keep, and `to_raw` (settings back to TOML-able data).

The model's schema (gptkit.model.GPTConfig) and the experiment's sections (gptkit.config) are both
written with these, which is why they live below both. Bounds raise ValueError with a message that
reads after the key's dotted path (`train.epochs: must be >= 1, got 0`); the config loader collects
them with every other problem, and direct construction raises the first.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

import attrs


@attrs.define
class Component:
    """A component picked by name, with its validated parameters (defaults filled)."""

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)


def kind(registry_kind: str, default: Any = attrs.NOTHING, *, unset: str | None = None, **kwargs: Any) -> Any:
    """A field whose value is a component of `registry_kind` (checked against its registry);
    `unset` says what leaving it out (None) means."""
    return attrs.field(default=default, metadata={"kind": registry_kind, "unset": unset}, **kwargs)


def unset(meaning: str, **kwargs: Any) -> Any:
    """A field that defaults to None, with what None means (`gptkit config show` prints it)."""
    return attrs.field(default=None, metadata={"unset": meaning}, **kwargs)


def path_field(default: Any = None, *, source: bool = False, unset: str | None = None, **kwargs: Any) -> Any:
    """A field (of a section or of a component's params class) holding a local path, which the config
    loader makes absolute: relative to the experiment file when written there, to the working
    directory when given as KEY=VALUE. URLs pass through. With `source`, the value may also be a
    model name or hub id (`gpt2-medium`, `openai-community/gpt2`), which pass through too: only a
    value that starts with `.`, `/` or `~`, or names an existing file or folder, is a path."""
    return attrs.field(default=default, metadata={"path": "source" if source else "path", "unset": unset}, **kwargs)


def resolve_path(value: str, base: Path, how: str) -> str:
    """`value` as an absolute path against `base` (see `path_field`), or unchanged."""
    if "://" in value:
        return value
    expanded = Path(value).expanduser()
    if how == "source" and not (value.startswith((".", "/", "~")) or (base / expanded).exists()):
        return value
    return os.path.normpath(base / expanded)


# --- bounds ---------------------------------------------------------------------------------------

Validator = Callable[[Any, "attrs.Attribute", Any], None]


def bound(holds: Callable[[Any], bool], rule: str) -> Validator:
    """A validator: values for which `holds` is false are refused as `{rule}, got {value}`; None
    (a field left unset) passes."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not holds(value):
            raise ValueError(f"{rule}, got {value}")

    return check


def at_least(low: float) -> Validator:
    return bound(lambda v: v >= low, f"must be >= {low}")


def above(low: float) -> Validator:
    return bound(lambda v: v > low, f"must be > {low}")


def fraction_below_one() -> Validator:
    return bound(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")


# --- back to TOML data ----------------------------------------------------------------------------


def to_raw(value: Any) -> Any:
    """An attrs object back to plain TOML-able data (components as `{name = ..., **params}`, no None)."""
    if isinstance(value, Component):
        return {"name": value.name, **{k: to_raw(v) for k, v in value.params.items() if v is not None}}
    if attrs.has(type(value)):
        out = {}
        for field in attrs.fields(type(value)):
            v = getattr(value, field.name)
            if v is not None:
                out[field.name] = to_raw(v)
        return out
    if isinstance(value, (list, tuple)):
        return [to_raw(v) for v in value]
    if isinstance(value, dict):
        return {k: to_raw(v) for k, v in value.items() if v is not None}
    return value


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one level of dotted keys (`{"train": {"lr": 1}}` -> `{"train.lr": 1}`)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- types in words -------------------------------------------------------------------------------


def fields_of(cls: type) -> dict[str, attrs.Attribute]:
    """An attrs class's fields by name, their types resolved."""
    attrs.resolve_types(cls)
    return {f.name: f for f in attrs.fields(cls)}


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """(X, True) for X | None, else (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A field type in words, as config errors and `gptkit list KIND NAME` say it."""
    inner, optional = optional_inner(tp)
    if optional:
        return type_name(inner) + " or nothing"
    origin = typing.get_origin(inner)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(inner))
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(inner)[0])}"
    if inner is Component:
        return "a table with a name"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(inner))
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(inner, getattr(inner, "__name__", str(inner)))
