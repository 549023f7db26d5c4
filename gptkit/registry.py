"""One registry per kind of component, filled by plugins through the `register_components` hook.

A registry maps a short name ("causal", "top-k", "acme.linear") to an `Entry`: the factory that
builds the component, the attrs class of its parameters (or None), a one-line doc and the origin
(the plugin that registered it). This module holds the classes only; the process-wide registries
(`gptkit.registry`) belong to the plugin manager (gptkit.plugins), which fills each kind on its first
lookup: `ensure_loaded(kind, name)` (name None: every name of the kind) runs before each.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from typing import Any, Callable, Iterator

import attrs

from gptkit.errors import RegistryError

KINDS = (
    "attention",
    "norm",
    "feedforward",
    "sampler",
    "tokenizer",
    "checkpoint",
    "dataset",
    "prompt",
    "collator",
    "finetune",
    "scorer",
    "tracker",
    "recipe",
)

# Set by the plugin manager while a plugin's register_components hook runs.
_current_origin: contextvars.ContextVar[str | None] = contextvars.ContextVar("gptkit_origin", default=None)


@contextlib.contextmanager
def registering_as(origin: str) -> Iterator[None]:
    """Attribute every registration made inside the block to `origin`."""
    token = _current_origin.set(origin)
    try:
        yield
    finally:
        _current_origin.reset(token)


@attrs.frozen
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type | None
    doc: str
    origin: str


class Registry:
    """The registered components of one kind.

    A registry with a `fallback` (what a plugin's `register_components` hook receives: its own
    staged names, over the process-wide registry) finds its own names first and every other name
    in the fallback, so a factory that keeps it can look any component up, built-in or not, long
    after the hook returned."""

    def __init__(self, kind: str, ensure_loaded: Callable[[str, str | None], None] = lambda kind, name: None, fallback: "Registry | None" = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._ensure_loaded = ensure_loaded
        self._fallback = fallback

    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        params: type | None = None,
        doc: str | None = None,
        origin: str | None = None,
    ):
        """Register `factory` under `name`; without a factory, return a decorator that does."""
        if factory is None:
            def decorator(f):
                self.register(name, f, params=params, doc=doc, origin=origin)
                return f

            return decorator
        if params is not None and not attrs.has(params):
            raise RegistryError(f"{self.kind} {name!r}: params must be an attrs class, got {params!r}")
        origin = origin or _current_origin.get() or getattr(factory, "__module__", "?")
        if name in self._entries:
            taken = self._entries[name]
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {taken.origin} and by {origin}"
            )
        first_doc_line = (doc or factory.__doc__ or "").strip().splitlines()
        self._entries[name] = Entry(self.kind, name, factory, params, first_doc_line[0] if first_doc_line else "", origin)
        return factory

    def clashes(self, other: "Registry") -> list[str]:
        """Messages for each name of `other` already registered here, naming both origins."""
        return [
            f"{self.kind} {name!r} is registered twice: by {self._entries[name].origin} and by {entry.origin}"
            for name, entry in other._entries.items()
            if name in self._entries
        ]

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry:
        self._ensure_loaded(self.kind, name)
        if name in self._entries:
            return self._entries[name]
        if self._fallback is not None and name in self._fallback:
            return self._fallback.get(name)
        raise RegistryError(self.unknown_message(name))

    def build(self, spec: Any, *args: Any) -> Any:
        """Build the component `spec` (a config.Component) as `factory(*args, **validated params)`."""
        entry = self.get(spec.name)
        if entry.params is None:
            if spec.params:
                raise RegistryError(f"{self.kind} {spec.name!r} takes no parameters, got {sorted(spec.params)}")
            return entry.factory(*args)
        try:
            params = entry.params(**spec.params)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{self.kind} {spec.name!r}: {exc}") from None
        return entry.factory(*args, **attrs.asdict(params, recurse=False))

    def holds(self, name: str) -> bool:
        """Whether `name` is registered here now, without loading any plugin to find it."""
        return name in self._entries

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded(self.kind, name)
        return name in self._entries or (self._fallback is not None and name in self._fallback)

    def names(self) -> list[str]:
        self._ensure_loaded(self.kind, None)
        fallback = self._fallback.names() if self._fallback is not None else []
        return sorted(self._entries.keys() | set(fallback))

    def entries(self) -> list[Entry]:
        return [self.get(n) for n in self.names()]

    def unknown_message(self, name: str) -> str:
        names = self.names()
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(names) or 'none'})"


class Registries:
    """The registries of every kind, as attributes: `registries.attention`, `registries.sampler`, ...
    With a `fallback`, each kind's registry finds the names it lacks there (see Registry)."""

    def __init__(self, ensure_loaded: Callable[[str, str | None], None] = lambda kind, name: None, fallback: "Registries | None" = None):
        for kind in KINDS:
            setattr(self, kind, Registry(kind, ensure_loaded, fallback[kind] if fallback is not None else None))

    def __getitem__(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        return getattr(self, kind)

    def __iter__(self) -> Iterator[Registry]:
        return (getattr(self, kind) for kind in KINDS)

    def merge(self, staged: "Registries") -> None:
        """Add everything `staged` holds, or nothing: any name already taken is an error naming
        every clash, so a plugin never half-registers."""
        clashes = [message for kind in KINDS for message in self[kind].clashes(staged[kind])]
        if clashes:
            raise RegistryError("; ".join(clashes))
        for kind in KINDS:
            self[kind]._entries.update(staged[kind]._entries)

    def entries(self) -> list[Entry]:
        """Every entry registered here, of every kind (not those found in the fallback)."""
        return [entry for reg in self for entry in reg._entries.values()]
