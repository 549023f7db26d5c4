"""`gptkit list KIND NAME`: a component's parameters (type, default, bounds, doc), its doc and origin."""

from __future__ import annotations

import attrs
from click.testing import CliRunner

from gptkit.cli import cli
from gptkit.component_help import describe
from gptkit.config import unset
from gptkit.registry import Registry, registering_as


def list_output(*args: str):
    result = CliRunner().invoke(cli, ["list", *args])
    return result.exit_code, result.output


def table_rows(text: str) -> dict[str, list[str]]:
    """{parameter: [type, default, notes]} of the printed table (columns split on two spaces or more)."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["parameter"])
    return {cells[0]: cells[1:] for line in lines[start + 1:] if (cells := re.split(r"\s{2,}", line.strip()))}


def test_list_kind_name_shows_the_parameters_of_top_k():
    code, out = list_output("sampler", "top-k")
    assert code == 0, out
    assert out.splitlines()[0] == "sampler top-k  [gptkit 0.1.0 [sampling]]"
    assert "Temperature sampling among the k most likely tokens" in out.splitlines()[1]
    assert table_rows(out) == {"top_k": ["integer or nothing", "unset", ">= 1"], "temperature": ["number", "1.0", ">= 0.0"]}


def test_list_kind_name_shows_docs_bounds_and_list_defaults():
    code, out = list_output("finetune", "lora")
    assert code == 0, out
    rows = table_rows(out)
    assert rows["dropout"] == ["number", "0.05", "in [0, 1)"]  # a validator function's docstring
    assert rows["targets"] == ["list of string", '["*.attn.qkv", "*.attn.proj", "*.ff.fc", "*.ff.proj"]',
                               "at least 1 item; fnmatch patterns of nn.Linear names"]
    assert rows["save_adapter"][:2] == ["true/false", "false"]


def test_list_kind_name_inherited_fields_and_choices():
    rows = table_rows(list_output("collator", "masked-response")[1])
    assert list(rows) == ["pad_id", "ignore_index", "allowed_max_length", "mask_prompt"]  # LMParams' fields first
    assert rows["pad_id"] == ["integer or nothing", "unset", "None: the tokenizer's end-of-text id"]
    rows = table_rows(list_output("dataset", "alpaca-json")[1])
    assert rows["path"][:2] == ["string", "required"]
    assert rows["on_bad_record"] == ["'error' | 'skip'", '"error"']  # the type lists the choices once


def test_list_kind_name_without_parameters():
    code, out = list_output("sampler", "greedy")
    assert code == 0 and out.rstrip().endswith("parameters: none")


def test_list_unknown_name_is_the_registrys_error():
    code, out = list_output("sampler", "top_k")
    assert code == 2
    assert "error: unknown sampler 'top_k'; did you mean 'top-k'? (registered: greedy, top-k, top-p)" in out


def test_describe_a_third_party_component():
    """Comments after fields (several lines too), `unset` meanings, and_/optional validators, factories."""

    def _even(instance, attribute, value):
        """an even number"""

    @attrs.define
    class Params:
        window: int = attrs.field(default=8, validator=[attrs.validators.ge(2), _even])  # tokens each side
        scale: float | None = attrs.field(  # multiplies the scores;
            default=None, validator=attrs.validators.optional(attrs.validators.and_(attrs.validators.gt(0), attrs.validators.le(4))),
        )  # None: 1/sqrt(head size)
        heads: list[int] = attrs.field(factory=lambda: [0, 1])
        mode: str | None = unset("the model's own")

    reg = Registry("attention")
    with registering_as("acme-attention 1.0 [acme]"):
        reg.register("acme.window", lambda config, **p: None, params=Params, doc="Sliding-window attention.")
    text = describe(reg.get("acme.window"))
    assert text.splitlines()[:2] == ["attention acme.window  [acme-attention 1.0 [acme]]", "  Sliding-window attention."]
    assert 'written { name = "acme.window", window = ... }' in text
    assert table_rows(text) == {
        "window": ["integer", "8", ">= 2; an even number; tokens each side"],
        "scale": ["number or nothing", "unset", "> 0; <= 4; multiplies the scores; None: 1/sqrt(head size)"],
        "heads": ["list of integer", "[0, 1]"],
        "mode": ["string or nothing", "unset", "unset: the model's own"],
    }
