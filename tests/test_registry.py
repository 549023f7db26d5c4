import attrs
import pytest

from gptkit.errors import RegistryError
from gptkit.registry import KINDS, Registries, Registry, registering_as, registry


def test_every_kind_has_a_registry():
    assert [r.kind for r in registry] == list(KINDS)
    for kind in KINDS:
        assert registry[kind].kind == kind


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
    from gptkit.config import Component

    sampler = registry.sampler.build(Component("top-k", {"top_k": 3}), None)
    assert sampler.top_k == 3 and sampler.temperature == 1.0
    with pytest.raises(RegistryError, match="top_k"):
        registry.sampler.build(Component("top-k", {"top_k": 0}), None)


def test_builtins_come_through_entry_points():
    from gptkit import plugins

    builtin = {p.name for p in plugins.loaded() if p.builtin}
    assert {"attention", "norms", "feedforward", "sampling", "tokenizers", "recipes"} <= builtin
    assert registry.attention.get("causal").origin.startswith("gptkit ")
