import re
import textwrap

import attrs
import pytest

from gptkit.config import Component, Config, load_config, structure, to_raw
from gptkit.errors import ConfigError, GptkitError
from conftest import EXPERIMENTS

MINIMAL = {"run": {"name": "t", "recipe": "generate"}, "model": {"preset": "gpt2"}}


def problems_of(raw, overrides=()):
    with pytest.raises(ConfigError) as err:
        structure(raw, list(overrides))
    return err.value.problems


def write(tmp_path, text):
    path = tmp_path / "x.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path):
    load_config(path)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_a_comment_that_names_a_key_sits_on_that_keys_line(path):
    """`save_best = false  # precision auto: ...` reads as if it were about save_best."""
    keys = {f.name: {g.name for g in attrs.fields(f.type)} for f in attrs.fields(attrs.resolve_types(Config)) if attrs.has(f.type)}
    section, misplaced = None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if header := re.match(r"\[(\w+)\]", line):
            section = header.group(1)
        elif entry := re.match(r"(\w+)\s*=.*\s#\s*(\w+)", line):
            key, first_word = entry.groups()
            if first_word in keys.get(section, ()) and first_word != key:
                misplaced.append(f"line {number}: {line}")
    assert misplaced == []


def test_three_mistakes_reported_together(tmp_path):
    path = write(
        tmp_path,
        """
        [run]
        name = "x"
        recipe = "generate"
        colour = "blue"
        [model]
        preset = "gpt2"
        n_layers = "4"
        [generate]
        sampler = { name = "top-k", top_k = 5, nucleus = 0.9 }
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        "run.colour: unknown key (expected one of: name, recipe, out_dir, resume, resume_changes, seed, device, threads, plugins)",
        "model.n_layers: expected integer, got string '4'",
        "generate.sampler.nucleus: unknown key (sampler 'top-k' takes: top_k, temperature)",
    ]
    assert str(path) in str(err.value) and "3 config problems" in str(err.value)


def test_no_silent_coercion():
    raw = {**MINIMAL, "train": {"epochs": 1.9, "lr": "3e-4", "compile": 1}}
    assert problems_of(raw) == [
        "train.epochs: expected integer, got number 1.9",
        "train.lr: expected number, got string '3e-4'",
        "train.compile: expected true/false, got integer 1",
    ]


def test_int_accepted_where_float_expected():
    config = structure({**MINIMAL, "train": {"lr": 1}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_missing_required_values():
    assert problems_of({"run": {}}) == ["run.name: required", "run.recipe: required"]


def test_unknown_component_name_lists_registered():
    (problem,) = problems_of(MINIMAL, ["model.attention.name=nope"])
    assert problem.startswith("model.attention.name: unknown attention 'nope'")
    assert "causal, causal-reference" in problem


def test_component_params_validated_by_their_own_class():
    (problem,) = problems_of({**MINIMAL, "generate": {"sampler": {"name": "top-k", "top_k": 0}}})
    assert problem.startswith("generate.sampler.top_k: 'top_k' must be >= 1")


def test_default_components_get_default_params():
    config = structure(MINIMAL)
    assert config.model.norm == Component("layernorm", {"eps": 1e-5})
    assert config.model.attention == Component("causal", {})


def test_overrides_parse_by_field_type():
    config = structure(
        MINIMAL,
        [
            "run.name=123",  # a string field takes the text as written
            "run.out_dir=../data/x",
            "train.lr=3e-4",
            "train.epochs=3",
            "train.compile=true",
            "data.split=[0.8, 0.2]",
            "generate.sampler.top_k=7",
            "model.attention.name=causal-reference",
            "track.trackers=[]",
        ],
    )
    assert config.run.name == "123" and config.run.out_dir == "../data/x"
    assert config.train.lr == 3e-4 and config.train.epochs == 3 and config.train.compile is True
    assert config.data.split == [0.8, 0.2]
    assert config.generate.sampler.params["top_k"] == 7
    assert config.model.attention.name == "causal-reference"


def test_override_that_does_not_parse_is_a_type_error():
    assert problems_of(MINIMAL, ["train.epochs=three"]) == ["train.epochs: expected integer, got string 'three'"]


def test_override_of_unknown_key_is_an_error():
    (problem,) = problems_of(MINIMAL, ["train.lrr=3"])
    assert problem.startswith("train.lrr: unknown key") and "train.lrr=3" in problem
    (problem,) = problems_of(MINIMAL, ["generate.sampler.top_p=0.9"])
    assert problem.startswith("generate.sampler.top_p: unknown key; did you mean 'top_k'? (sampler 'top-k' takes: top_k, temperature)")


def test_malformed_override():
    assert problems_of(MINIMAL, ["train.lr"]) == ["train.lr: an override is KEY=VALUE or ~KEY (e.g. train.lr=3e-4)"]


def test_remove_key_goes_back_to_default():
    raw = {**MINIMAL, "generate": {"prompt": "Hi", "max_new_tokens": 3}}
    config = structure(raw, ["~generate.prompt", "~init.checkpoint"])
    assert config.generate.prompt == "Every effort moves you" and config.generate.max_new_tokens == 3


def test_model_sizes_required_without_preset_or_checkpoint():
    problems = problems_of({"run": {"name": "t", "recipe": "generate"}, "model": {"emb_dim": 30, "n_heads": 4}})
    assert "model.vocab_size: required (or set model.preset, or init.checkpoint)" in problems
    assert "model.emb_dim: 30 is not divisible by model.n_heads = 4" in problems


def test_unknown_preset():
    (problem,) = problems_of({"run": {"name": "t", "recipe": "generate"}, "model": {"preset": "gpt5"}})
    assert problem.startswith("model.preset: unknown preset 'gpt5'")


def test_invalid_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "[run\nname = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(GptkitError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_resolved_config_round_trips():
    import tomllib

    from gptkit.runs import config_toml

    config = structure(MINIMAL, ["train.lr=1e-3", "generate.sampler.temperature=0"])
    again = structure(tomllib.loads(config_toml(config)))
    assert again == config
    assert to_raw(again)["generate"]["sampler"] == {"name": "top-k", "top_k": 25, "temperature": 0.0}
