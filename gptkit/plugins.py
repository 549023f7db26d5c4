"""The plugin manager: finds plugins by entry point (group "gptkit"), lets them register components,
and owns the process-wide registries that they fill (`gptkit.registry`).

Built-in components (package gptkit_plugins) come through the same entry-point group as any
third-party package. Environment:

- `GPTKIT_PLUGINS`: comma list of third-party entry-point names to load; unset loads all, empty
  loads none beyond the built-ins. A name that matches no installed entry point is a warning.
- `GPTKIT_DISABLE_PLUGINS`: comma list of entry-point names never to load (built-ins included).

A plugin that fails to import or register is reported as a warning naming it; the rest still work.
Registration is all or nothing per plugin: a plugin whose names clash with another's, or a
third-party plugin registering a name without a prefix and a dot (`acme.linear`), registers nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

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


manager = pluggy.PluginManager(hookspecs.PROJECT)
manager.add_hookspecs(hookspecs)
_loaded: dict[str, PluginInfo] = {}
_state = {"loaded": False}


def load() -> None:
    """Load every wanted entry-point plugin once and let it register its components."""
    if _state["loaded"]:
        return
    _state["loaded"] = True
    entry_points = sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name)
    disabled = _names_from_env("GPTKIT_DISABLE_PLUGINS") or set()
    allowed = _names_from_env("GPTKIT_PLUGINS")
    if allowed:
        installed = {ep.name for ep in entry_points}
        for name in sorted(allowed - installed):
            warnings.warn(
                f"GPTKIT_PLUGINS names {name!r}, which no installed package provides "
                f"(installed plugins: {', '.join(sorted(installed))})",
                PluginWarning,
                stacklevel=2,
            )
    for ep in entry_points:
        dist = ep.dist.name if ep.dist else "?"
        builtin = dist == BUILTIN_DISTRIBUTION
        wanted = ep.name not in disabled and (builtin or allowed is None or ep.name in allowed)
        if ep.name in _loaded or not wanted:
            continue
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", builtin)
        _loaded[ep.name] = info
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break gptkit
            _fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
            continue
        register(module, ep.name, info)


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
    load()
    return list(_loaded.values())


def hook():
    """The hook relay: `hook().on_step_end(run=..., step=..., metrics=...)`."""
    load()
    return manager.hook


registry = Registries(ensure_loaded=load)
"""The process-wide registries (also `gptkit.registry`), filled by the plugins on first lookup."""


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
