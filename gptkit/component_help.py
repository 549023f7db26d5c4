"""`gptkit list KIND NAME`: one registered component described from its registry entry.

A component's parameters are the fields of its attrs params class: name, type, default, bounds read
from the field's validators (attrs' ge/gt/le/lt, in_, min_len, optional, and_; a validator function
of its own shows its docstring's first line) and the field's doc, which is the comment written
after it in the class (the style of gptkit's own plugins, so third-party ones get it for free) or
the `unset` meaning given through gptkit.config's field helpers.
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any, Literal

import attrs
import tomli_w

from gptkit.schema import fields_of, optional_inner, type_name
from gptkit.registry import Entry
from gptkit.tables import aligned


def describe(entry: Entry) -> str:
    """The text `gptkit list KIND NAME` prints: a heading, the one-line doc, a parameter table."""
    lines = [f"{entry.kind} {entry.name}  [{entry.origin}]"]
    if entry.doc:
        lines.append(f"  {entry.doc}")
    if entry.params is None:
        return "\n".join([*lines, "", "parameters: none"])
    comments = field_comments(entry.params)
    rows = [("parameter", "type", "default", "notes")]
    for field in fields_of(entry.params).values():
        notes = [*bounds(field), comments.get(field.name) or _unset_meaning(field)]
        rows.append((field.name, type_name(field.type), _default(field), "; ".join(n for n in notes if n)))
    if len(rows) == 1:
        return "\n".join([*lines, "", "parameters: none"])
    example = f'{{ name = "{entry.name}", {rows[1][0]} = ... }}'
    return "\n".join([*lines, "", f"parameters, written {example}:", *("  " + line for line in aligned(rows))])


def _default(field: attrs.Attribute) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory() if not default.takes_self else "computed"
    return "unset" if default is None else _toml_literal(default)


def _toml_literal(value: Any) -> str:
    """`value` as written in an experiment file, on one line."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def _unset_meaning(field: attrs.Attribute) -> str:
    meaning = field.metadata.get("unset")
    return f"unset: {meaning}" if meaning else ""


def bounds(field: attrs.Attribute) -> list[str]:
    """What the field's validators accept, in words ('>= 1', 'at least 1 item'), as far as they say."""
    literal = typing.get_origin(optional_inner(field.type)[0]) is Literal  # the type already lists the choices
    return [text for v in _validators(field.validator) if (text := _bound(v, literal))]


def _validators(validator: Any) -> list[Any]:
    """Flatten attrs' optional(...) / and_(...) / lists of validators into the validators they hold."""
    if validator is None:
        return []
    if isinstance(validator, (list, tuple)):
        return [v for item in validator for v in _validators(item)]
    if hasattr(validator, "_validators"):  # attrs' and_
        return _validators(list(validator._validators))
    if hasattr(validator, "validator") and not hasattr(validator, "bound"):  # attrs' optional
        return _validators(validator.validator)
    return [validator]


def _bound(validator: Any, literal: bool) -> str:
    if hasattr(validator, "bound") and hasattr(validator, "compare_op"):  # ge, gt, le, lt
        return f"{validator.compare_op} {validator.bound}"
    if hasattr(validator, "options"):  # in_
        return "" if literal else "one of " + ", ".join(repr(o) for o in validator.options)
    if hasattr(validator, "min_length"):
        return f"at least {validator.min_length} item" + ("s" if validator.min_length != 1 else "")
    if hasattr(validator, "max_length"):
        return f"at most {validator.max_length} items"
    doc = inspect.getdoc(validator) if inspect.isfunction(validator) else None
    return doc.splitlines()[0] if doc else ""


def field_comments(cls: type) -> dict[str, str]:
    """{field name: the comment written after it in the class body}, for `cls` and its bases (empty
    where the source cannot be read)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        by_line = {token.start[0]: token.string.lstrip("#").strip()
                   for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                said = [by_line[n] for n in range(node.lineno, node.end_lineno + 1) if n in by_line]
                if said:
                    comments[node.target.id] = " ".join(said)
    return comments
