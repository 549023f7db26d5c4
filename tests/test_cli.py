"""The command line, run as users run it: a subprocess, checking exit codes, stdout and stderr."""

import re
import subprocess
import sys

import pytest

from conftest import EXPERIMENTS, ROOT

TINY = str(ROOT / "experiments" / "tiny_generate.toml")


def gptkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True, env=env, timeout=300)


def test_version_and_help():
    assert gptkit("--version").stdout.startswith("gptkit, version ")
    out = gptkit("--help").stdout
    for command in ("run", "list", "plugins", "config"):
        assert command in out


@pytest.mark.slow
def test_list_shows_every_kind_and_origins():
    out = gptkit("list").stdout
    for kind in ("attention:", "norm:", "feedforward:", "sampler:", "tokenizer:", "checkpoint:", "recipe:"):
        assert kind in out
    attention = gptkit("list", "attention").stdout
    assert "causal " in attention and "causal-reference" in attention and "[gptkit 0.1.0 [attention]]" in attention


def test_list_unknown_kind_exits_2():
    result = gptkit("list", "widgets")
    assert result.returncode == 2 and "unknown component kind 'widgets'" in result.stderr


def test_plugins_lists_builtins_in_aligned_columns():
    out = gptkit("plugins").stdout
    assert "attention" in out and "(built-in)" in out and "register_components" in out
    columns = {tuple(m.start() for m in re.finditer(r"\S+(?: \S+)*", line)) for line in out.splitlines()}
    assert len(columns) == 1 and len(next(iter(columns))) == 5, out  # name, distribution, version, kind, hooks


def test_validate_every_shipped_experiment():
    result = gptkit("config", "validate", *map(str, EXPERIMENTS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(EXPERIMENTS)


def test_validate_reports_all_mistakes_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[run]\nname = "x"\nrecipe = "generate"\nsteps = 3\n'
        '[train]\nepochs = "two"\n'
        '[model]\npreset = "gpt2"\nnorm = { name = "layernorm", epsilon = 1e-6 }\n'
    )
    result = gptkit("config", "validate", str(bad))
    assert result.returncode == 2
    assert "run.steps: unknown key" in result.stderr
    assert "train.epochs: expected integer, got string 'two'" in result.stderr
    assert "model.norm.epsilon: unknown key; did you mean 'eps'? (norm 'layernorm' takes: eps)" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_unknown_attention_names_registered():
    result = gptkit("config", "validate", TINY, "model.attention.name=nope")
    assert result.returncode == 2
    assert "unknown attention 'nope'" in result.stderr and "causal, causal-reference" in result.stderr


def test_config_show_applies_overrides():
    result = gptkit("config", "show", TINY, "train.lr=3e-4", "generate.prompt=Hi")
    assert result.returncode == 0
    assert "lr = 0.0003" in result.stdout and 'prompt = "Hi"' in result.stdout


@pytest.mark.slow
def test_run_tiny_generate(tmp_path):
    result = gptkit("run", TINY, f"run.out_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you")
    assert (tmp_path / "out" / "config.toml").is_file() and (tmp_path / "out" / "samples.txt").is_file()
    assert "[provenance]" in (tmp_path / "out" / "config.toml").read_text()


def test_missing_experiment_file_is_one_line():
    result = gptkit("run", "nope.toml")
    assert result.returncode == 2 and result.stderr.strip() == "error: nope.toml: no such file"


def test_debug_shows_traceback():
    result = gptkit("--debug", "run", "nope.toml")
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_a_run_ends_by_naming_its_folder_and_what_to_do_next(tmp_path):
    """Issue 21, item 7: every `gptkit run` ends with its run folder, on stderr (stdout stays the recipe's)."""
    out = tmp_path / "out"
    result = gptkit("run", TINY, f"run.out_dir={out}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"run folder: {out}; next: gptkit generate {out} --prompt TEXT | gptkit eval {out} --text FILE"
    )
    again = gptkit("generate", str(out), "--prompt", "Hi", "--max-new-tokens", "2")
    assert again.returncode == 0 and again.stdout.startswith("Hi")
