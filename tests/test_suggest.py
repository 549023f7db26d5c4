""""Did you mean" knows the names users bring from nanoGPT, Hugging Face, litgpt and torchtune: in
config files, overrides, sweep parameters and sweep metrics (one alias table, gptkit/suggest.py)."""

from __future__ import annotations

import textwrap

import pytest

from gptkit.config import load_config, structure
from gptkit.errors import ConfigError, GptkitError
from gptkit.suggest import ALIASES, did_you_mean

from conftest import ROOT


def test_a_config_in_other_toolkits_names_gets_every_suggestion_at_once(tmp_path):
    path = tmp_path / "nanogpt.toml"
    path.write_text(textwrap.dedent("""
        [run]
        name = "x"
        recipe = "pretrain"
        output_dir = "out"
        [model]
        vocab_size = 257
        block_size = 64
        n_embd = 64
        n_layer = 2
        n_head = 4
        dropout = 0.1
        bias = false
        [data]
        tokenizer = { name = "bytes" }
        dataset = { name = "text", path = "text.txt" }
        [train]
        learning_rate = 1e-3
        max_iters = 100
        micro_batch_size = 4
        gradient_accumulation_steps = 2
        weight-decay = 0.1
        max_grad_norm = 1.0
        num_train_epochs = 3
    """), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    unknown = [p for p in err.value.problems if "unknown key" in p]  # the others: the sizes [model] lacks
    suggested = {p.split(":")[0]: p.partition("did you mean ")[2].split("?")[0] for p in unknown}
    assert suggested == {
        "run.output_dir": "'out_dir'",
        "model.block_size": "'context_length'", "model.n_embd": "'emb_dim'", "model.n_layer": "'n_layers'",
        "model.n_head": "'n_heads'", "model.dropout": "'drop_rate'", "model.bias": "'qkv_bias'",
        "train.learning_rate": "'lr'", "train.max_iters": "'max_steps'",
        "train.micro_batch_size": "'batch_size' (the global batch of a step, split into grad_accum micro-batches)",
        "train.gradient_accumulation_steps": "'grad_accum'", "train.weight-decay": "'weight_decay'",
        "train.max_grad_norm": "'grad_clip'", "train.num_train_epochs": "'epochs'",
    }
    assert all("unknown key; did you mean" in p and "(expected one of: " in p for p in unknown)


@pytest.mark.parametrize("override, meant", [
    ("train.learning_rate=1e-3", "lr"), ("model.n_positions=128", "context_length"), ("model.n_ctx=128", "context_length"),
    ("train.wd=0.1", "weight_decay"), ("train.eval_interval=5", "eval_every"), ("train.eval_iters=2", "eval_batches"),
    ("model.hidden_size=64", "emb_dim"), ("model.num_attention_heads=4", "n_heads"), ("train.warmup_iters=10", "warmup_steps"),
])
def test_overrides_in_other_toolkits_names(override, meant):
    with pytest.raises(ConfigError) as err:
        structure({"run": {"name": "t", "recipe": "generate"}, "model": {"preset": "gpt2"}}, [override])
    (problem,) = err.value.problems
    assert problem.startswith(f"{override.split('=')[0]}: unknown key; did you mean {meant!r}? (expected one of: ")


def test_an_alias_is_suggested_only_where_its_target_is_allowed():
    assert did_you_mean("learning_rate", ["lr", "epochs"]) == "; did you mean 'lr'?"
    assert did_you_mean("learning_rate", ["name", "recipe"]) == ""  # [run] has no lr: nothing, not a wrong section's key
    assert did_you_mean("exact-match", ["val_loss", "exact_match"]) == "; did you mean 'exact_match'?"
    assert did_you_mean("exact_match", ["exact-match", "rouge-l"]) == "; did you mean 'exact-match'?"
    assert did_you_mean("max_new_token", ["max_new_tokens", "prompt"]) == "; did you mean 'max_new_tokens'?"  # spelling, as before
    assert all(alias == alias.lower().replace("-", "_") and alias != target for alias, target in ALIASES.items())


def sweep_file(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"program: {ROOT / 'experiments' / 'quickstart.toml'}\n" + textwrap.dedent(text), encoding="utf-8")
    return path


def test_sweep_parameters_and_metrics_in_other_names(tmp_path):
    pytest.importorskip("sweeps")
    from gptkit.sweep import load_sweep

    with pytest.raises(GptkitError, match=r"parameter model\.n_embd = 32: model\.n_embd: unknown key; did you mean 'emb_dim'\?"):
        load_sweep(sweep_file(tmp_path, """
            method: grid
            metric: {name: val_loss, goal: minimize}
            parameters:
              model.n_embd: {values: [32, 64]}
        """), runs_dir=tmp_path / "runs")
    with pytest.raises(GptkitError, match=r"metric 'exact-match': the instruct recipe does not log it; did you mean 'exact_match'\? \(it logs: "):
        load_sweep(sweep_file(tmp_path, """
            method: grid
            metric: {name: exact-match, goal: maximize}
            parameters:
              train.lr: {values: [0.001, 0.003]}
        """), runs_dir=tmp_path / "runs")
