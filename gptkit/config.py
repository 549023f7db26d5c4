"""Experiments: TOML files checked against attrs sections, with KEY=VALUE overrides.

`load_config(path, overrides)` returns a `Config` or raises `ConfigError` listing EVERY problem, one
line each with its dotted path: unknown keys, wrong types (no silent "4" -> 4 or 1.9 -> 1), missing
required values, unknown component names and component parameters that the component's own params
class rejects. A component is written `{ name = "top-k", top_k = 40 }`: its name picks a registered
component and the other keys are checked against that component's params class.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import attrs
import tomli_w

from gptkit.errors import ConfigError, GptkitError
from gptkit.model_config import GPTConfig, size_problems
from gptkit import plugins
from gptkit.plugins import registry
from gptkit.presets import PRESETS, SIZE_KEYS, resolve_preset
from gptkit.schema import Component, above, at_least, bound, fields_of, kind, optional_inner, path_field, resolve_path, to_raw, type_name, unset
from gptkit.suggest import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _near(key: str, choices: Any) -> str:
    return did_you_mean(key, choices)


# --- the sections -------------------------------------------------------------------------------


def _folder_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"a folder name is needed (letters, digits, - _ .; no slash), got {value!r}: the run writes runs/<name>")


@attrs.define
class RunSection:
    name: str = attrs.field(validator=_folder_name)
    recipe: str = kind("recipe")
    out_dir: str | None = unset("runs/<name>, relative to the working directory")
    resume: str = attrs.field(default="none", validator=bound(bool, "none, auto or a checkpoint path"))  # none | auto | PATH
    resume_changes: Literal["refuse", "allow"] = "refuse"  # settings that alter the trajectory, changed on resume
    seed: int = 123
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = unset("torch's own choice of intra-op threads", validator=at_least(1))
    # Plugin modules to load that are not installed packages, e.g. ["my_attention"] for my_attention.py
    # beside the experiment: try a component before packaging it (see the README's plugin guide).
    plugins: list[str] = attrs.field(factory=list)


@attrs.define
class InitSection:
    checkpoint: Component | None = kind("checkpoint", None, unset="random initialisation ([model] init)")
    adapter: str | None = path_field(unset="no adapter")  # a LoRA adapter (a folder in PEFT's layout, or its file), merged into the checkpoint


@attrs.define
class DataSection:
    tokenizer: Component = kind("tokenizer", factory=lambda: Component("gpt2"))
    dataset: Component | None = kind("dataset", None, unset="none (the recipes that train need one)")
    prompt: Component | None = kind("prompt", None, unset="none: no prompt format")
    collator: Component = kind("collator", factory=lambda: Component("lm"))
    split: list[float] = attrs.field(  # train, val[, test] shares
        factory=lambda: [0.9, 0.1],
        validator=bound(lambda s: 2 <= len(s) <= 3 and min(s) >= 0 and abs(sum(s) - 1.0) <= 1e-6, "2 or 3 non-negative fractions (train, val[, test]) summing to 1"),
    )
    split_order: list[str] | None = unset("the parts are cut in the order train, val, test")


@attrs.define
class TrainSection:
    finetune: Component = kind("finetune", factory=lambda: Component("full"))
    epochs: int = attrs.field(default=1, validator=at_least(1), metadata={"doc": "passes over the training split; training ends after them, or at max_steps if that comes first"})
    max_steps: int = attrs.field(default=0, validator=at_least(0), metadata={"doc": "0: no limit; N > 0 stops at optimizer step N, even mid-epoch, never past the epochs"})
    batch_size: int = attrs.field(default=8, validator=at_least(1))
    grad_accum: int = attrs.field(default=1, validator=at_least(1))
    lr: float = attrs.field(default=4e-4, validator=above(0))
    min_lr: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = attrs.field(default=0, validator=at_least(0))
    weight_decay: float = 0.1
    betas: list[float] = attrs.field(factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.0  # 0: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    eval_every: int = attrs.field(default=5, validator=at_least(0))
    eval_batches: int = attrs.field(default=5, validator=at_least(1))
    checkpoint_every: int = attrs.field(default=0, validator=at_least(0))  # 0: only at the end
    keep_checkpoints: int = attrs.field(default=2, validator=at_least(1))
    early_stopping_patience: int = attrs.field(default=0, validator=at_least(0))  # evaluations without a better val_loss; 0: never stop early
    save_best: bool = True  # keep checkpoints/best: the model with the lowest val_loss so far
    group_by_length: bool = False  # batch examples of similar length together (less padding; see training.epoch_order)
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"  # auto: single for one process, ddp for several (torchrun)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    cpu_offload: bool = False  # fsdp: keep parameter shards, gradients and optimizer state in CPU memory


@attrs.define
class GenerateSection:
    sampler: Component = kind("sampler", factory=lambda: Component("top-k", {"top_k": 25, "temperature": 1.4}))
    max_new_tokens: int = attrs.field(default=50, validator=at_least(0))
    prompt: str = "Every effort moves you"
    ignore_eos: bool = False


@attrs.define
class EvalSection:
    scorers: list[Component] = kind("scorer", factory=list)
    sampler: Component | None = kind("sampler", None, unset="greedy decoding, as the original scripts")  # responses.json
    max_new_tokens: int = attrs.field(default=256, validator=at_least(1))  # per response in responses.json
    batch_size: int = attrs.field(default=8, validator=at_least(1))  # prompts generated together for responses.json
    text: str | None = path_field(unset="none (the evaluate recipe needs a text file)")
    stride: int | None = unset("the context length")


@attrs.define
class TrackSection:
    trackers: list[Component] = kind("tracker", factory=list)


@attrs.define
class Config:
    """A resolved experiment. `provenance` is written by runs (versions, device) and ignored on load."""

    run: RunSection
    model: GPTConfig = attrs.field(factory=GPTConfig)
    init: InitSection = attrs.field(factory=InitSection)
    data: DataSection = attrs.field(factory=DataSection)
    train: TrainSection = attrs.field(factory=TrainSection)
    generate: GenerateSection = attrs.field(factory=GenerateSection)
    eval: EvalSection = attrs.field(factory=EvalSection)
    track: TrackSection = attrs.field(factory=TrackSection)
    provenance: dict[str, Any] = attrs.field(factory=dict)


# --- structuring: raw TOML data -> attrs objects, collecting every problem --------------------


_MISSING = object()


def _describe(value: Any) -> str:
    kinds = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}
    return f"{kinds.get(type(value), type(value).__name__)} {value!r}"


class _Structurer:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def value(self, tp: Any, value: Any, path: str, registry_kind: str | None = None) -> Any:
        inner, optional = optional_inner(tp)
        if value is None:
            if optional or tp is Any:
                return None
            self.problem(path, f"expected {type_name(tp)}, got nothing")
            return _MISSING
        tp = inner
        if tp is Any:
            return value
        if tp is Component:
            return self.component(value, path, registry_kind)
        if attrs.has(tp):
            return self.attrs_class(tp, value, path)
        origin = typing.get_origin(tp)
        if origin is Literal:
            if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
                return value
            return self.wrong(tp, value, path)
        if origin in (list, tuple):
            if not isinstance(value, list):
                return self.wrong(tp, value, path)
            item = typing.get_args(tp)[0]
            items = [self.value(item, v, f"{path}[{i}]", registry_kind) for i, v in enumerate(value)]
            return items if origin is list else tuple(items)
        if origin is dict or tp is dict:
            return value if isinstance(value, dict) else self.wrong(tp, value, path)
        if origin in (Union, types.UnionType):
            for option in typing.get_args(tp):
                if self.matches(option, value):
                    return float(value) if option is float else value
            return self.wrong(tp, value, path)
        if self.matches(tp, value):
            if registry_kind and tp is str:
                self.registered_name(value, path, registry_kind)
            return float(value) if tp is float else value
        return self.wrong(tp, value, path)

    @staticmethod
    def matches(tp: Any, value: Any) -> bool:
        if tp is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(tp, type) and isinstance(value, tp)

    def wrong(self, tp: Any, value: Any, path: str) -> Any:
        self.problem(path, f"expected {type_name(tp)}, got {_describe(value)}")
        return _MISSING

    def attrs_class(self, cls: type, data: Any, path: str, owner: str | None = None) -> Any:
        if not isinstance(data, dict):
            return self.wrong(cls, data, path)
        fields = fields_of(cls)
        prefix = f"{path}." if path else ""
        for key in data:
            if key not in fields:
                allowed = ", ".join(fields) or "no parameters"
                where = f"{owner} takes" if owner else "expected one of"
                self.problem(f"{prefix}{key}", f"unknown key{_near(key, fields)} ({where}: {allowed})")
        values: dict[str, Any] = {}
        for name, field in fields.items():
            registry_kind = field.metadata.get("kind")
            if name in data:
                values[name] = self.value(field.type, data[name], f"{prefix}{name}", registry_kind)
            elif field.default is attrs.NOTHING:
                self.problem(f"{prefix}{name}", "required")
                values[name] = _MISSING
            else:  # defaults go through the same checks, so default components get their default params
                default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
                values[name] = self.value(field.type, to_raw(default), f"{prefix}{name}", registry_kind)
        for name, value in values.items():
            validator = fields[name].validator
            if validator is not None and value is not _MISSING:
                try:
                    validator(None, fields[name], value)
                except (ValueError, TypeError) as exc:
                    self.problem(f"{prefix}{name}", str(exc))
                    values[name] = _MISSING
        if any(v is _MISSING for v in values.values()):
            return _MISSING
        try:
            return cls(**{k: v for k, v in values.items()})
        except (ValueError, TypeError) as exc:
            self.problem(path or cls.__name__, str(exc))
            return _MISSING

    def component(self, data: Any, path: str, registry_kind: str | None) -> Any:
        if registry_kind is None and isinstance(data, str):
            return self.wrong(Component, data, path)
        if not isinstance(data, dict):
            return self.wrong(Component, data, path)
        name = data.get("name")
        if not isinstance(name, str):
            self.problem(f"{path}.name", "required (a registered name)" if name is None else f"expected string, got {_describe(name)}")
            return _MISSING
        params = {k: v for k, v in data.items() if k != "name"}
        if registry_kind is None:
            return Component(name, params)
        reg = registry[registry_kind]
        if name not in reg:
            self.problem(f"{path}.name", reg.unknown_message(name))
            return _MISSING
        params_cls = reg.get(name).params
        if params_cls is None:
            for key in params:
                self.problem(f"{path}.{key}", f"unknown key ({registry_kind} {name!r} takes no parameters)")
            return Component(name, {}) if not params else _MISSING
        validated = self.attrs_class(params_cls, params, path, owner=f"{registry_kind} {name!r}")
        if validated is _MISSING:
            return _MISSING
        return Component(name, attrs.asdict(validated, recurse=False))

    def registered_name(self, value: str, path: str, registry_kind: str) -> None:
        if value not in registry[registry_kind]:
            self.problem(path, registry[registry_kind].unknown_message(value))


def show_toml(config: Config) -> str:
    """The resolved config as TOML, with every key left unset shown as a comment under its table
    (`# out_dir: unset (runs/<name>, ...)`), so that the output lists every key there is, and the
    keys whose meaning needs a word (a field's metadata "doc") explained the same way."""
    comments: dict[str, list[str]] = {}
    for section_field in attrs.fields(Config):
        section = getattr(config, section_field.name)
        if not attrs.has(type(section)):
            continue
        for field in attrs.fields(type(section)):
            value = getattr(section, field.name)
            if value is None:
                meaning = field.metadata.get("unset")
                comments.setdefault(section_field.name, []).append(f"# {field.name}: unset" + (f" ({meaning})" if meaning else ""))
            elif field.metadata.get("doc"):
                comments.setdefault(section_field.name, []).append(f"# {field.name}: {field.metadata['doc']}")
            elif isinstance(value, Component):
                entry = registry[field.metadata["kind"]].get(value.name)
                for name in fields_of(entry.params) if entry.params else {}:
                    if value.params.get(name) is None:
                        comments.setdefault(f"{section_field.name}.{field.name}", []).append(f"# {name}: unset ({value.name}'s default)")
    lines = []
    for line in tomli_w.dumps(to_raw(config)).splitlines():
        lines.append(line)
        if line.startswith("[") and line.strip("[]") in comments:
            lines += comments.pop(line.strip("[]"))
    for table, rest in comments.items():  # tables with no key set at all
        lines += ["", f"[{table}]", *rest]
    return "\n".join(lines) + "\n"


# --- overrides ----------------------------------------------------------------------------------


def _leaf_type(parts: list[str], raw: dict[str, Any], fill_defaults: bool) -> tuple[Any, str | None, Any]:
    """(the declared type at a dotted path, None, its attrs field or None), or (None, problem, None)
    when the path names no key.

    With `fill_defaults`, a component the raw data leaves out is filled in with its default, so that
    `generate.sampler.top_k=5` refines the default sampler instead of replacing it with a nameless one.
    """
    tp: Any = Config
    node: Any = raw
    field: Any = None
    for depth, part in enumerate(parts):
        tp, _ = optional_inner(tp)
        here = ".".join(parts[: depth + 1])
        child_default: Any = None
        field = None
        if tp is Component:
            if part == "name":
                tp = str
            else:
                name = node.get("name") if isinstance(node, dict) else None
                kind_ = _component_kind(parts[:depth])
                if kind_ and isinstance(name, str) and name in registry[kind_]:
                    params_cls = registry[kind_].get(name).params
                    params = fields_of(params_cls) if params_cls else {}
                    if part not in params:
                        takes = ", ".join(params) or "no parameters"
                        return None, f"{here}: unknown key{_near(part, params)} ({kind_} {name!r} takes: {takes})", None
                    field = params[part]
                    tp = field.type
                else:
                    tp = Any
        elif attrs.has(tp):
            fields = fields_of(tp)
            if part not in fields:
                return None, f"{here}: unknown key{_near(part, fields)} (expected one of: {', '.join(fields)})", None
            field = fields[part]
            tp = field.type
            if isinstance(field.default, attrs.Factory):
                child_default = field.default.factory()
        elif typing.get_origin(tp) is dict or tp is Any:
            tp = Any
        else:
            return None, f"{here}: {'.'.join(parts[:depth])} is {type_name(tp)}, it has no key {part!r}", None
        if fill_defaults and isinstance(node, dict) and part not in node and depth < len(parts) - 1:
            node[part] = to_raw(child_default) if isinstance(child_default, Component) else {}
        node = node.get(part) if isinstance(node, dict) else None
    return tp, None, field


def _component_kind(parts: list[str]) -> str | None:
    cls: Any = Config
    field = None
    for part in parts:
        cls, _ = optional_inner(cls)
        if not attrs.has(cls):
            return None
        field = fields_of(cls).get(part)
        if field is None:
            return None
        cls = field.type
    return field.metadata.get("kind") if field is not None else None


def _parse_value(tp: Any, text: str) -> Any:
    """Strings are taken as written; anything else is a TOML literal when it parses as one."""
    inner, _ = optional_inner(tp)
    is_text = inner is str or (typing.get_origin(inner) is Literal and all(isinstance(a, str) for a in typing.get_args(inner)))
    if is_text:
        return text
    if inner is bool and text in ("True", "False"):  # Python's spelling, as `wandb agent` writes booleans
        return text == "True"
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], problems: list[str]) -> None:
    """Apply `KEY=VALUE` and `~KEY` to raw config data in place; report bad ones to `problems`.
    A path given here is relative to the working directory: it is made absolute now."""
    for override in overrides:
        remove = override.startswith("~")
        key, sep, text = override[1:].partition("=") if remove else override.partition("=")
        key = key.strip()
        if not key or (not remove and not sep) or (remove and sep):
            problems.append(f"{override}: an override is KEY=VALUE or ~KEY (e.g. train.lr=3e-4)")
            continue
        parts = key.split(".")
        tp, problem, field = _leaf_type(parts, raw, fill_defaults=not remove)
        if problem:
            problems.append(f"{problem} (from override {override!r})")
            continue
        node = raw
        for part in parts[:-1]:
            node = node.get(part)
            if not isinstance(node, dict):
                break  # only when removing a key whose table is absent: nothing to remove
        else:
            if remove:
                node.pop(parts[-1], None)
            else:
                value = _parse_value(tp, text)
                how = field.metadata.get("path") if field is not None else None
                node[parts[-1]] = resolve_path(value, Path.cwd(), how) if how and isinstance(value, str) else value


# --- loading ------------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GptkitError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"], source=str(path)) from None
    except OSError as exc:
        raise GptkitError(f"{path}: cannot read: {exc.strerror}") from None


def structure(raw: dict[str, Any], overrides: list[str] = (), source: str | None = None, base: Path | None = None) -> Config:
    """Check raw config data (plus overrides) and return the Config, or raise ConfigError with every
    problem. Relative paths in `raw` resolve against `base` (default: the working directory)."""
    raw = _deepcopy(raw)
    problems: list[str] = []
    apply_overrides(raw, list(overrides), problems)
    problems += load_run_plugins(raw, base or Path.cwd())
    structurer = _Structurer()
    config = structurer.attrs_class(Config, raw, "")
    if config is not _MISSING:
        _check(config, structurer)
    problems += structurer.problems
    if problems:
        raise ConfigError(problems, source=source)
    _resolve_paths(config, base or Path.cwd())
    return config


def load_run_plugins(raw: dict[str, Any], base: Path) -> list[str]:
    """Load the modules `[run] plugins` names, before the components they may register are checked."""
    names = raw.get("run", {}).get("plugins", []) if isinstance(raw.get("run"), dict) else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return []  # the structurer reports the wrong type
    return [f"run.plugins: {problem}" for problem in plugins.load_modules(names, base)]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load an experiment TOML file, apply `KEY=VALUE` / `~KEY` overrides and validate everything.
    Paths written in the file are relative to the file's folder."""
    return structure(read_toml(path), list(overrides), source=str(path), base=Path(path).resolve().parent)


def _resolve_paths(section: Any, base: Path) -> None:
    """Make every path field (see `path_field`) of the config's sections and components absolute."""
    for field in attrs.fields(type(section)):
        value = getattr(section, field.name)
        how = field.metadata.get("path")
        if how and isinstance(value, str):
            setattr(section, field.name, resolve_path(value, base, how))
        elif field.metadata.get("kind"):
            for spec in value if isinstance(value, list) else [value]:
                if isinstance(spec, Component) and spec.name in registry[field.metadata["kind"]]:
                    params_cls = registry[field.metadata["kind"]].get(spec.name).params
                    for name, param in (fields_of(params_cls) if params_cls else {}).items():
                        how = param.metadata.get("path")
                        if how and isinstance(spec.params.get(name), str):
                            spec.params[name] = resolve_path(spec.params[name], base, how)
        elif attrs.has(type(value)):
            _resolve_paths(value, base)


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def _check(config: Config, s: _Structurer) -> None:
    """Checks that span several keys (each key's own bounds are declared beside it)."""
    m = config.model
    if config.init.checkpoint is None:  # else the checkpoint gives the sizes (and checks them when loaded)
        sizes = {k: getattr(m, k) for k in SIZE_KEYS if getattr(m, k) is not None}
        for key, message in size_problems({**(PRESETS[resolve_preset(m.preset)] if m.preset else {}), **sizes}):
            s.problem(f"model.{key}", message)
    if config.init.adapter is not None and config.init.checkpoint is None:
        s.problem("init.adapter", "needs init.checkpoint: the base model the adapter was trained on")
    t = config.train
    if t.batch_size % t.grad_accum:
        s.problem("train.grad_accum", f"must divide train.batch_size = {t.batch_size}, got {t.grad_accum}")
    parts = ["train", "val", "test"][: len(config.data.split)]
    order = config.data.split_order
    if order is not None and sorted(order) != sorted(parts):
        s.problem("data.split_order", f"the parts of data.split in the order they are cut, each once: a permutation of {parts}, got {order}")
