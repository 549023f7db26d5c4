"""The plugin manager: finds plugins by entry point (group "gptkit"), lets them register components,
and owns the process-wide registries that they fill (`gptkit.registry`).

Built-in components (packages gptkit_plugins and gptkit.recipes) come through the same entry-point
group as any third-party package, and are loaded kind by kind when a kind is first used: building a
GPT imports the attention, norm and feedforward plugins and nothing else. Third-party plugins are
loaded together, the first time a name they could hold is looked up (their names carry a prefix and
a dot, `acme.linear`), a kind is listed, or a hook is called. `load_modules` loads plugin modules
that are not packaged (`[run] plugins`). Environment:

- `GPTKIT_PLUGINS`: comma list of third-party entry-point names to load; unset loads all, empty
  loads none beyond the built-ins. A name that matches no installed entry point is a warning.
- `GPTKIT_DISABLE_PLUGINS`: comma list of entry-point names never to load (built-ins included).

A plugin that fails to import or register is reported as a warning naming it; the rest still work.
Registration is all or nothing per plugin: a plugin whose names clash with another's, or a
third-party plugin registering a name without a prefix and a dot (`acme.linear`), registers nothing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

import attrs
import pluggy

from gptkit import hookspecs
from gptkit.errors import GptkitWarning, RegistryError
from gptkit.registry import Registries, registering_as

BUILTIN_DISTRIBUTION = "gptkit"


@attrs.define
class PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool
    hooks: list[str] = attrs.field(factory=list)
    error: str | None = None


class PluginWarning(GptkitWarning):
    """A plugin could not be loaded; gptkit goes on without it."""


# The built-in entry points (pyproject.toml) that register each kind; tests/test_registry.py checks
# the table against what each of them registers.
BUILTIN_KINDS: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "norm": ("norms",),
    "feedforward": ("feedforward",),
    "sampler": ("sampling",),
    "tokenizer": ("tokenizers",),
    "checkpoint": ("openai_tf", "hf", "native_checkpoint"),
    "dataset": ("text_data", "instruct_data", "synthetic_tasks"),
    "prompt": ("prompts",),
    "collator": ("collators",),
    "finetune": ("finetune", "lora"),
    "scorer": ("scorers",),
    "tracker": ("trackers",),
    "recipe": ("recipes",),
}

manager = pluggy.PluginManager(hookspecs.PROJECT)
manager.add_hookspecs(hookspecs)
_loaded: dict[str, PluginInfo] = {}
_kinds_loaded: set[str] = set()
_third_party = {"loaded": False}


@functools.cache
def entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The installed entry points of group "gptkit", by name."""
    return tuple(sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name))


def is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return (ep.dist.name if ep.dist else "?") == BUILTIN_DISTRIBUTION


def load_kind(kind: str, name: str | None = None) -> None:
    """Load what a lookup of `name` (None: every name) among the components of `kind` needs: the
    built-in plugins of that kind, and, for a name that is not a built-in's, the third-party ones."""
    if kind not in _kinds_loaded:
        _kinds_loaded.add(kind)
        for ep in entry_points():
            if is_builtin(ep) and ep.name in BUILTIN_KINDS.get(kind, ()):
                _load_entry_point(ep)
    if name is None or not registry[kind].holds(name):
        load_third_party()


def load_third_party() -> None:
    """Load every wanted third-party entry-point plugin, once."""
    if _third_party["loaded"]:
        return
    _third_party["loaded"] = True
    allowed = _names_from_env("GPTKIT_PLUGINS")
    if allowed:
        installed = {ep.name for ep in entry_points()}
        for name in sorted(allowed - installed):
            warnings.warn(
                f"GPTKIT_PLUGINS names {name!r}, which no installed package provides "
                f"(installed plugins: {', '.join(sorted(installed))})",
                PluginWarning,
                stacklevel=2,
            )
    for ep in entry_points():
        if not is_builtin(ep) and (allowed is None or ep.name in allowed):
            _load_entry_point(ep)


def load() -> None:
    """Load every wanted plugin, built-in and third-party (what listing them all needs)."""
    for kind in BUILTIN_KINDS:
        load_kind(kind)
    load_third_party()


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    """Import the entry point's module, unless disabled or loaded, and let it register its components."""
    if ep.name in _loaded or ep.name in (_names_from_env("GPTKIT_DISABLE_PLUGINS") or set()):
        return
    info = PluginInfo(ep.name, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?", is_builtin(ep))
    _loaded[ep.name] = info
    try:
        module = ep.load()
    except Exception as exc:  # a broken plugin must not break gptkit
        _fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
        return
    register(module, ep.name, info)


def load_modules(names: list[str], folder: Path) -> list[str]:
    """Import and register plugin modules that are not packaged (`[run] plugins`), found on the
    Python path, in the working directory or in `folder` (the experiment's); returns a problem
    for each that fails, naming it. Loading a module twice is a no-op."""
    problems = []
    for name in names:
        if name in _loaded:
            continue
        info = _loaded[name] = PluginInfo(name, "(run.plugins)", "", False)
        with _searching(folder, Path.cwd()):
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                del _loaded[name]
                problems.append(f"cannot import {name!r}: {type(exc).__name__}: {exc}")
                continue
        with warnings.catch_warnings(record=True):
            register(module, name, info)
        if info.error:
            problems.append(f"{name!r}: {info.error}")
    return problems


@contextlib.contextmanager
def _searching(*folders: Path) -> Iterator[None]:
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def register(plugin: object, name: str, info: PluginInfo | None = None) -> None:
    """Register a plugin object (module or instance) and run its `register_components` hook."""
    info = info or _loaded.setdefault(name, PluginInfo(name, "(in process)", "", False))
    try:
        manager.register(plugin, name=name)
    except Exception as exc:
        _fail(info, f"rejected by the plugin manager: {exc}")
        return
    info.hooks = sorted(impl.name for impl in manager.get_hookcallers(plugin) or [])
    impl = getattr(plugin, "register_components", None)
    if impl is None:
        return
    origin = f"{info.distribution} {info.version}".strip() + f" [{name}]"
    staged = Registries(fallback=registry)  # the plugin may keep it: lookups reach every plugin's names
    try:
        with registering_as(origin):
            impl(registry=staged)
        if not info.builtin:
            _check_prefixed(staged)
        registry.merge(staged)
    except Exception as exc:
        manager.unregister(plugin)
        _fail(info, f"register_components failed: {type(exc).__name__}: {exc}")


def _check_prefixed(staged: Registries) -> None:
    """Third-party names carry a prefix and a dot, so they never take a built-in's short name."""
    bare = [f"{e.kind} {e.name!r}" for e in staged.entries() if "." not in e.name.strip(".")]
    if bare:
        raise RegistryError(f"third-party names need a prefix and a dot, as in 'acme.name': {', '.join(bare)}")


def unregister(name: str) -> None:
    """Remove a plugin registered in process (components it registered stay until removed)."""
    manager.unregister(name=name)
    _loaded.pop(name, None)


def _fail(info: PluginInfo, message: str) -> None:
    info.error = message
    warnings.warn(f"gptkit plugin {info.name!r} ({info.distribution}): {message}", PluginWarning, stacklevel=3)


def loaded() -> list[PluginInfo]:
    """Every plugin, loaded now if it was not yet."""
    load()
    return list(_loaded.values())


def hook():
    """The hook relay of every plugin: `hook().on_step_end(run=..., step=..., metrics=...)`. Only
    third-party plugins are loaded for it: the built-ins implement no hook but register_components."""
    load_third_party()
    return manager.hook


registry = Registries(ensure_loaded=load_kind)
"""The process-wide registries (also `gptkit.registry`), filled by the plugins kind by kind, on first lookup."""


class RunHooks:
    """The hook relay of one run: `hooks.on_eval(run=..., step=..., metrics=...)` calls the run's own
    observers first (objects with `@hookimpl` methods, as plugins are: trackers, the engine's
    run-folder writer, what the caller of `gptkit.run` passed), then every plugin's hooks. An
    observer thus hears only its own run's events, though several runs share the process."""

    def __init__(self, observers: list[object]):
        self.own = pluggy.PluginManager(hookspecs.PROJECT)
        self.own.add_hookspecs(hookspecs)
        for observer in reversed(observers):  # pluggy calls the last registered first
            self.own.register(observer)

    def __getattr__(self, name: str):
        own, every = getattr(self.own.hook, name), getattr(hook(), name)
        return lambda **kwargs: [*own(**kwargs), *every(**kwargs)]
