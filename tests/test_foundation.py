"""What a new user hit on the landed core (issue "Foundation"), each checked as the user meets it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner

import gptkit
from gptkit.cli import cli
from gptkit.config import Config, load_config, show_toml
from gptkit.errors import ConfigError
from gptkit.plugins import BUILTIN_DISTRIBUTION
from gptkit.testing import write_tiny_pretrain

from conftest import ROOT
from plugin_packages import gptkit as gptkit_in, install

TINY_GENERATE = ROOT / "experiments" / "tiny_generate.toml"


def gptkit_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def write_experiment(folder: Path, dataset_path: str = "text.txt") -> Path:
    """gptkit.testing's tiny pretraining experiment in `folder`, reading `dataset_path` (relative to it)."""
    experiment = write_tiny_pretrain(folder)
    experiment.write_text(experiment.read_text().replace('path = "text.txt"', f'path = "{dataset_path}"'), encoding="utf-8")
    return experiment


# --- the generate recipe's run folder is a SOURCE ------------------------------------------------


@pytest.mark.slow
def test_generate_run_folder_loads_and_generates(tmp_path):
    out = tmp_path / "runs" / "tiny-generate"
    gptkit.run(load_config(TINY_GENERATE, [f"run.out_dir={out}"]))
    assert (out / "model" / "model.safetensors").is_file()
    model, tokenizer = gptkit.load_model(out)
    assert model.config.vocab_size == 257 and tokenizer.name == "bytes"
    result = gptkit_cli("generate", str(out), "--prompt", "Every", "--max-new-tokens", "3")
    assert result.returncode == 0 and result.stdout.startswith("Every"), result.stderr


# --- config show lists every key -----------------------------------------------------------------


def test_config_show_lists_every_key_set_or_unset():
    shown = show_toml(load_config(TINY_GENERATE))
    for section in attrs.fields(Config):
        if section.name == "provenance":
            continue
        for field in attrs.fields(section.type if isinstance(section.type, type) else type(getattr(load_config(TINY_GENERATE), section.name))):
            assert f"\n{field.name} = " in shown or f"\n# {field.name}: unset" in shown or f"[{section.name}.{field.name}]" in shown, (section.name, field.name)
    assert "# out_dir: unset (runs/<name>" in shown and "# checkpoint: unset (random initialisation" in shown
    assert tomllib.loads(shown)["run"]["name"] == "tiny-generate"  # still TOML: the comments are comments


# --- run.name ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".."])
def test_run_name_must_be_a_folder_name(name):
    with pytest.raises(ConfigError, match=r"run.name: a folder name is needed"):
        load_config(TINY_GENERATE, [f"run.name={name}"])


# --- paths ---------------------------------------------------------------------------------------


def test_paths_in_an_experiment_resolve_against_its_folder(tmp_path, monkeypatch):
    experiment = write_experiment(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(experiment, [f"run.out_dir={tmp_path / 'run'}"])
    assert config.data.dataset.params["path"] == str(tmp_path / "project" / "text.txt")
    gptkit.run(config)
    recorded = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert recorded["data"]["dataset"]["path"] == str(tmp_path / "project" / "text.txt")


def test_paths_given_as_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    experiment = write_experiment(tmp_path / "project")
    (tmp_path / "cwd" / "texts").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    config = load_config(experiment, ["data.dataset.path=texts/other.txt", "eval.text=../notes.txt"])
    assert config.data.dataset.params["path"] == str(tmp_path / "cwd" / "texts" / "other.txt")
    assert config.eval.text == str(tmp_path / "notes.txt")


def test_urls_model_names_and_hub_ids_pass_through(tmp_path):
    experiment = write_experiment(tmp_path, dataset_path="https://example.org/story.txt")
    assert load_config(experiment).data.dataset.params["path"] == "https://example.org/story.txt"
    for checkpoint, model in (("openai-tf", "gpt2-medium"), ("hf", "openai-community/gpt2")):
        config = load_config(experiment, [f"init.checkpoint={{name = '{checkpoint}', model = '{model}'}}"])
        assert config.init.checkpoint.params["model"] == model
    local = load_config(experiment, ["init.checkpoint={name = 'hf', model = './my-model'}"])
    assert local.init.checkpoint.params["model"] == str(Path.cwd() / "my-model")


# --- SOURCE --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_misspelt_local_source_is_no_such_folder_with_near_matches(tmp_path):
    (tmp_path / "runs" / "tiny-pretrain").mkdir(parents=True)
    result = gptkit_cli("generate", "runs/tiny-pretrian", "--prompt", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: runs/tiny-pretrian: no such folder; did you mean runs/tiny-pretrain?"
    dotted = gptkit_cli("generate", "./nothing-here", "--prompt", "x", cwd=tmp_path)
    assert dotted.returncode == 2 and "nothing-here: no such folder" in dotted.stderr and "hub" not in dotted.stderr


@pytest.mark.slow
def test_a_tokenizer_larger_than_the_vocabulary_is_an_error_not_an_index_error(tmp_path, gpt2_vocab):
    from gptkit.checkpoint import save_model
    from gptkit.model import GPT, GPTConfig
    from gptkit_plugins.tokenizers import gpt2_from_files

    model = GPT(GPTConfig(vocab_size=97, context_length=16, emb_dim=8, n_heads=2, n_layers=1))
    save_model(tmp_path / "small", model, gpt2_from_files(gpt2_vocab))
    for args in (["generate", str(tmp_path / "small"), "--prompt", "Hello"], ["eval", str(tmp_path / "small"), "--text", str(ROOT / "README.md")]):
        result = gptkit_cli(*args)
        assert result.returncode == 2, result.stderr
        assert "the model's vocab_size 97 is smaller than the tokenizer's 50257 ids (gpt2)" in result.stderr
        assert "Traceback" not in result.stderr


# --- plugins' warnings ---------------------------------------------------------------------------


def test_gptkit_plugins_naming_nothing_installed_warns_with_the_installed_names(tmp_path):
    """With a third-party plugin installed too (as the plugin guide has users do), the warning names the
    unknown name and every installed plugin, built-ins included; which others are installed varies."""
    site = install(ROOT / "examples" / "acme-window-attention", tmp_path)
    result = gptkit_in(site, "list", "attention", GPTKIT_PLUGINS="acmee")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: GPTKIT_PLUGINS names 'acmee', which no installed package provides")
    assert ".py:" not in lines[0]
    named = set(lines[0].partition("(installed plugins: ")[2].removesuffix(")").split(", "))
    builtins = {ep.name for ep in importlib.metadata.entry_points(group="gptkit") if ep.dist.name == BUILTIN_DISTRIBUTION}
    assert {"attention", "sampling"} <= builtins <= named and "acme_window" in named


# --- one error style -----------------------------------------------------------------------------


def test_usage_errors_use_the_same_error_prefix():
    result = gptkit_cli("generate")
    assert result.returncode == 2 and "error: Missing argument 'SOURCE'" in result.stderr
    assert "Error:" not in result.stderr


def test_validate_with_an_override_lacking_a_value_says_key_value():
    result = gptkit_cli("config", "validate", str(TINY_GENERATE), "train.lr")
    assert result.returncode == 2
    assert "train.lr: an override is KEY=VALUE or ~KEY" in result.stderr


def test_unknown_keys_get_did_you_mean():
    with pytest.raises(ConfigError) as err:
        load_config(TINY_GENERATE, ["train.learning_rate=1e-3"])
    assert "train.learning_rate: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match=r"generate.max_new_token: unknown key; did you mean 'max_new_tokens'\?"):
        load_config(TINY_GENERATE, ["generate.max_new_token=3"])


# --- runs: the folder, the last sample, provenance ----------------------------------------------


def test_a_run_that_fails_while_setting_up_leaves_no_folder(tmp_path):
    experiment = write_experiment(tmp_path, dataset_path="data/missing.txt")
    out = tmp_path / "runs" / "tiny"
    result = gptkit_cli("run", str(experiment), f"run.out_dir={out}")
    assert result.returncode == 2 and "missing.txt: no such file or folder" in result.stderr
    assert not out.exists()


def test_a_run_stopped_mid_epoch_by_max_steps_still_writes_its_sample(tmp_path):
    experiment = write_experiment(tmp_path)
    out = tmp_path / "run"
    final = gptkit.run(load_config(experiment, [f"run.out_dir={out}", "train.max_steps=3"]))
    assert final["step"] == 3 and final["epoch"] < 1
    assert (out / "samples.txt").read_text(encoding="utf-8").startswith("epoch 1, step 3:\n")


@pytest.mark.slow
def test_provenance_records_the_resolved_precision_and_the_command(tmp_path):
    experiment = write_experiment(tmp_path)
    out = tmp_path / "run"
    result = gptkit_cli("run", str(experiment), f"run.out_dir={out}", "train.max_steps=1", "train.precision=auto")
    assert result.returncode == 0, result.stderr
    provenance = tomllib.loads((out / "config.toml").read_text())["provenance"]
    from gptkit.runs import cpu_has_bf16

    assert provenance["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert provenance["command"] == ["gptkit", "run", str(experiment), f"run.out_dir={out}", "train.max_steps=1", "train.precision=auto"]
    assert provenance["world_size"] == 1


def test_the_best_checkpoint_is_a_source(tmp_path):
    experiment = write_experiment(tmp_path)
    out = tmp_path / "run"
    gptkit.run(load_config(experiment, [f"run.out_dir={out}", "train.save_best=true", "train.eval_every=1"]))
    best, _ = gptkit.load_model(out / "checkpoints" / "best")
    latest, _ = gptkit.load_model(out)
    assert best.config == latest.config


# --- threads -------------------------------------------------------------------------------------


def test_run_threads_and_threads_options_set_torchs_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        gptkit.run(load_config(TINY_GENERATE, [f"run.out_dir={tmp_path / 'g'}", "run.threads=1"]))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        result = CliRunner().invoke(cli, ["generate", str(tmp_path / "g"), "--prompt", "a", "--max-new-tokens", "2", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="run.threads: must be >= 1"):
        load_config(TINY_GENERATE, ["run.threads=0"])


# --- no setting that silently does nothing -------------------------------------------------------


@pytest.mark.parametrize("key", ["data.num_workers=2", "train.log_every=5"])
def test_removed_settings_are_unknown_keys(key):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TINY_GENERATE, [key])
