"""Registries and the plugin manager, checked against what DESIGN.md promises (written out here, not
read from the code that builds the registries)."""

import types
import warnings

import attrs
import pytest

from gptkit import hookimpl, plugins
from gptkit.config import Component
from gptkit.errors import RegistryError
from gptkit.plugins import PluginWarning, registry
from gptkit.registry import Registries, Registry, registering_as

# DESIGN.md's table of kinds, in its order.
DESIGN_KINDS = [
    "attention", "norm", "feedforward", "sampler", "tokenizer", "checkpoint", "dataset",
    "prompt", "collator", "finetune", "scorer", "tracker", "recipe",
]
# Built-ins that have landed, by kind (DESIGN.md's "built-ins (at least)" column, as far as built).
LANDED_BUILTINS = {
    "attention": {"causal", "causal-reference"},
    "norm": {"layernorm", "rmsnorm"},
    "feedforward": {"gelu-mlp"},
    "sampler": {"greedy", "top-k", "top-p"},
    "tokenizer": {"gpt2", "bytes"},
    "checkpoint": {"openai-tf", "hf", "gptkit"},
    "dataset": {"text", "alpaca-json", "synthetic-tasks"},
    "prompt": {"alpaca", "phi3", "compact"},
    "collator": {"lm", "masked-response"},
    "finetune": {"full", "freeze", "lora"},
    "scorer": {"exact-match", "rouge-l", "ollama-judge"},
    "recipe": {"pretrain", "generate", "evaluate"},
}


def test_the_kinds_are_designs():
    assert [r.kind for r in registry] == DESIGN_KINDS
    for kind in DESIGN_KINDS:
        assert getattr(registry, kind) is registry[kind]


@pytest.mark.parametrize("kind", sorted(LANDED_BUILTINS))
def test_builtins_are_registered_with_a_doc_and_gptkit_origin(kind):
    for name in LANDED_BUILTINS[kind]:
        entry = registry[kind].get(name)
        assert entry.doc and entry.origin.startswith("gptkit 0.1.0 ["), (kind, name, entry)


def test_register_get_names_and_decorator():
    reg = Registry("attention")

    @attrs.define
    class Params:
        window: int = 8

    @reg.register("acme.window", params=Params, doc="Sliding-window attention.\nMore text.")
    def build(config, window):
        return ("built", window)

    reg.register("plain", lambda config: "plain")
    entry = reg.get("acme.window")
    assert entry.factory is build and entry.params is Params
    assert entry.doc == "Sliding-window attention."
    assert reg.names() == ["acme.window", "plain"]
    assert reg.build(Component("acme.window", {"window": 3}), None) == ("built", 3)


def test_taken_name_names_both_origins():
    reg = Registry("norm")
    with registering_as("first-dist 1.0 [a]"):
        reg.register("mine", lambda c: None)
    with registering_as("second-dist 2.0 [b]"), pytest.raises(RegistryError) as err:
        reg.register("mine", lambda c: None)
    assert "first-dist 1.0 [a]" in str(err.value) and "second-dist 2.0 [b]" in str(err.value)


def test_unknown_name_lists_registered_and_nearest():
    with pytest.raises(RegistryError) as err:
        registry.attention.get("casual")
    message = str(err.value)
    assert "did you mean 'causal'?" in message
    assert "causal-reference" in message and "causal," in message


def test_params_must_be_attrs():
    with pytest.raises(RegistryError):
        Registry("sampler").register("x", lambda ctx: None, params=dict)


def test_unknown_kind():
    with pytest.raises(RegistryError, match="kinds: attention"):
        Registries()["widgets"]


def test_build_validates_params():
    sampler = registry.sampler.build(Component("top-k", {"top_k": 3}), None)
    assert sampler.top_k == 3 and sampler.temperature == 1.0
    with pytest.raises(RegistryError, match="top_k"):
        registry.sampler.build(Component("top-k", {"top_k": 0}), None)


def test_builtins_come_through_entry_points():
    builtin = {p.name for p in plugins.loaded() if p.builtin}
    assert {"attention", "norms", "feedforward", "sampling", "tokenizers", "recipes"} <= builtin


def _plugin(name, register):
    module = types.ModuleType(name)
    module.register_components = hookimpl(register)
    return module


def _register_in_process(module, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins.register(module, name)
    return [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_a_clash_registers_nothing_of_that_plugin_and_names_the_clash():
    def first(registry):
        registry.sampler.register("acme.same", lambda ctx: "first", doc="first")

    def second(registry):
        registry.sampler.register("acme.fresh", lambda ctx: None, doc="would be new")
        registry.sampler.register("acme.same", lambda ctx: None, doc="clashes with the first plugin")

    assert _register_in_process(_plugin("first", first), "first") == []
    messages = _register_in_process(_plugin("clashing", second), "clashing")
    try:
        assert len(messages) == 1 and "sampler 'acme.same' is registered twice" in messages[0]
        assert "by (in process) [first] and by (in process) [clashing]" in messages[0]
        assert "acme.fresh" not in registry.sampler  # atomic: the plugin's other names are gone too
        assert registry.sampler.get("acme.same").factory(None) == "first"
        assert [p for p in plugins.loaded() if p.name == "clashing"][0].error
    finally:
        for name in ("first", "clashing"):
            plugins.unregister(name)
        registry.sampler.unregister("acme.same")


def test_third_party_names_need_a_prefix_and_a_dot():
    def register(registry):
        registry.norm.register("acme.ok", lambda config: None)
        registry.norm.register("bare", lambda config: None)

    messages = _register_in_process(_plugin("unprefixed", register), "unprefixed")
    try:
        assert len(messages) == 1 and "prefix and a dot" in messages[0] and "norm 'bare'" in messages[0]
        assert "acme.ok" not in registry.norm and "bare" not in registry.norm
    finally:
        plugins.unregister("unprefixed")


def test_a_good_plugin_registers_everything():
    def register(registry):
        registry.norm.register("acme.good", lambda config: "built", doc="A test norm.")

    assert _register_in_process(_plugin("good", register), "good") == []
    try:
        assert registry.norm.get("acme.good").origin == "(in process) [good]"
    finally:
        plugins.unregister("good")
        registry.norm.unregister("acme.good")


def test_the_registry_a_plugin_is_given_finds_every_name_after_registration():
    """A factory that keeps its hook's registry finds built-ins, other plugins' names and its own."""
    kept = {}

    def register(registry):
        kept["registry"] = registry
        registry.norm.register("acme.kept", lambda config: registry.norm.build(Component("layernorm"), config))

    assert _register_in_process(_plugin("keeper", register), "keeper") == []
    try:
        staged = kept["registry"]
        assert staged.norm.get("layernorm") is registry.norm.get("layernorm")
        assert "causal" in staged.attention and "acme.kept" in staged.norm
        assert {"layernorm", "rmsnorm", "acme.kept"} <= set(staged.norm.names())
        config = types.SimpleNamespace(emb_dim=8)
        assert type(registry.norm.build(Component("acme.kept"), config)).__name__ == type(registry.norm.build(Component("layernorm"), config)).__name__
        with pytest.raises(RegistryError, match="did you mean 'layernorm'"):
            staged.norm.get("layernorn")
    finally:
        plugins.unregister("keeper")
        registry.norm.unregister("acme.kept")


def test_the_table_of_builtin_kinds_says_what_each_builtin_registers():
    """Built-ins load kind by kind (plugins.BUILTIN_KINDS): each built-in entry point is listed under
    exactly the kinds it registers."""
    registers: dict[str, set[str]] = {}
    for ep in plugins.entry_points():
        if plugins.is_builtin(ep):
            staged = Registries()
            ep.load().register_components(registry=staged)
            registers[ep.name] = {entry.kind for entry in staged.entries()}
    table = {name: {kind for kind, names in plugins.BUILTIN_KINDS.items() if name in names} for name in registers}
    assert table == registers


def test_run_plugins_loads_a_module_beside_the_experiment(tmp_path):
    (tmp_path / "my_unpackaged_norm.py").write_text(
        "import torch\nfrom gptkit import hookimpl\n\n"
        "@hookimpl\ndef register_components(registry):\n"
        "    registry.norm.register('mine.identity', lambda config: torch.nn.Identity(), doc='No norm at all.')\n"
    )
    experiment = tmp_path / "x.toml"
    experiment.write_text('[run]\nname = "x"\nrecipe = "generate"\nplugins = ["my_unpackaged_norm"]\n[model]\npreset = "gpt2"\nnorm = { name = "mine.identity" }\n')
    from gptkit.config import load_config
    from gptkit.errors import ConfigError

    try:
        assert load_config(experiment).model.norm.name == "mine.identity"
        assert registry.norm.get("mine.identity").origin == "(run.plugins) [my_unpackaged_norm]"
        with pytest.raises(ConfigError) as err:
            load_config(experiment, ['run.plugins=["no_such_module"]'])
        assert err.value.problems[0] == "run.plugins: cannot import 'no_such_module': ModuleNotFoundError: No module named 'no_such_module'"
    finally:
        plugins.unregister("my_unpackaged_norm")
        registry.norm.unregister("mine.identity")
