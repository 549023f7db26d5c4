"""The instruct recipe end to end: the shipped experiments, responses.json and scores.json, the
original partition of the 1,100 records, chat and re-scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gptkit
from gptkit.config import load_config
from gptkit.errors import GptkitError

from conftest import ROOT
from gpt2_fixtures import SHARED_GPT2, serve_folder, random_hf_model, write_openai_folder

EXPERIMENTS = ROOT / "experiments"
RECORDS = json.loads((EXPERIMENTS / "data" / "instruction-data.json").read_text(encoding="utf-8"))


def gptkit_cli(*args, input=None, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True, input=input, cwd=cwd, env=env, timeout=600)


@pytest.fixture
def gpt2_vocabulary(monkeypatch):
    """instruct_test.toml's gpt2 tokenizer offline: tiktoken's cache when seeded, else the shared files."""
    if not SHARED_GPT2.is_dir():
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_GPT2}")
    return [f"data.tokenizer.path={SHARED_GPT2}"]


@pytest.mark.slow
def test_instruct_test_writes_responses_and_scores(tmp_path, gpt2_vocabulary):
    out = tmp_path / "run"
    result = gptkit_cli("run", str(EXPERIMENTS / "instruct_test.toml"), f"run.out_dir={out}", *gpt2_vocabulary)
    assert result.returncode == 0, result.stderr
    responses = json.loads((out / "responses.json").read_text(encoding="utf-8"))
    # 40 records cut 85% train (34), then 10% test (4), then the rest val (2): test = records 34-37
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in RECORDS[34:38]]
    assert all(isinstance(r["model_response"], str) and r["output"] == RECORDS[34 + i]["output"] for i, r in enumerate(responses))
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert set(scores) == {"exact-match", "rouge-l"} and all(s["n"] == 4 for s in scores.values())
    assert "exact-match: 0.000 over 4 responses" in result.stdout
    for name in ("config.toml", "metrics.jsonl", "loss.png", "samples.txt"):
        assert (out / name).is_file(), name
    sample = (out / "samples.txt").read_text(encoding="utf-8")
    assert RECORDS[38]["instruction"] in sample  # the epoch sample answers the first val record
    gptkit.load_model(out)  # the run folder is a SOURCE


@pytest.fixture(scope="module")
def gpt2_medium_server(tmp_path_factory):
    """A small random checkpoint in OpenAI's layout, served under the gpt2-355M name."""
    if not SHARED_GPT2.is_dir():
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_GPT2}")
    model = random_hf_model(50257, 1024, 16, 2, 1, seed=3)
    folder = write_openai_folder(model, tmp_path_factory.mktemp("openai") / "355M", real_vocab=True, writer="python")
    with serve_folder(folder, size="355M") as server:
        yield server


@pytest.mark.slow
def test_instruct_medium_runs_end_to_end_with_only_overrides(tmp_path, gpt2_medium_server):
    out = tmp_path / "run"
    config = load_config(EXPERIMENTS / "instruct_medium.toml", [
        f"init.checkpoint.base_url={gpt2_medium_server.url}",
        f"init.checkpoint.dir={tmp_path / 'weights'}",
        f"data.dataset.path={EXPERIMENTS / 'data' / 'instruction-data.json'}",
        "train.max_steps=2",
        f"run.out_dir={out}",
        "eval.max_new_tokens=8",
    ])
    final = gptkit.run(config)
    assert final["step"] == 2 and {"exact_match", "rouge_l"} <= set(final)
    responses = json.loads((out / "responses.json").read_text(encoding="utf-8"))
    # the original partition: train 0-934, test 935-1044, val 1045-1099
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in RECORDS[935:1045]]
    assert json.loads((out / "scores.json").read_text(encoding="utf-8"))["exact-match"]["n"] == 110
    saved = json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert saved["prompt"] == {"name": "alpaca"}
    assert (tmp_path / "weights" / "355M" / "hparams.json").is_file()  # never the user's cache


def test_instruct_needs_a_prompt_format_and_three_parts(tmp_path):
    base = [f"run.out_dir={tmp_path / 'x'}", "data.tokenizer.name=bytes", "model.vocab_size=257", "model.context_length=64",
            "model.emb_dim=8", "model.n_heads=2", "model.n_layers=1", "data.dataset={name = 'synthetic-tasks', count = 40}"]
    config = load_config(EXPERIMENTS / "quickstart.toml", [*base, "~data.prompt"])
    with pytest.raises(GptkitError, match="data.prompt: required by the instruct recipe"):
        gptkit.run(config)
    config = load_config(EXPERIMENTS / "quickstart.toml", [*base, "data.split=[0.9, 0.1]"])
    with pytest.raises(GptkitError, match="data.split: the instruct recipe needs train, val and test shares"):
        gptkit.run(config)
    assert not (tmp_path / "x").exists()


def test_unknown_prompt_format_is_a_config_error():
    result = gptkit_cli("config", "validate", str(EXPERIMENTS / "quickstart.toml"), "data.prompt.name=alpacca")
    assert result.returncode == 2 and "data.prompt.name: unknown prompt 'alpacca'; did you mean 'alpaca'?" in result.stderr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A few steps of the quickstart: a run folder with a prompt format, responses and scores."""
    out = tmp_path_factory.mktemp("quick") / "run"
    config = load_config(EXPERIMENTS / "quickstart.toml", [f"run.out_dir={out}", "train.max_steps=3", "data.dataset.count=200", "run.threads=1"])
    gptkit.run(config)
    return out


@pytest.mark.slow
def test_chat_answers_one_line_per_input_line_in_the_saved_format(quick_run):
    result = gptkit_cli("chat", str(quick_run), "--max-new-tokens", "5", input="Reverse the word.\n\nUppercase the word.\n/exit\nnot read\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # two instructions, the blank line skipped, /exit ends


@pytest.mark.slow
def test_chat_on_a_model_without_a_prompt_format_says_so(tmp_path):
    gptkit.run(load_config(EXPERIMENTS / "tiny_generate.toml", [f"run.out_dir={tmp_path / 'g'}"]))
    result = gptkit_cli("chat", str(tmp_path / "g"), input="hello\n")
    assert result.returncode == 2 and "records no prompt format" in result.stderr and "--prompt-format" in result.stderr
    named = gptkit_cli("chat", str(tmp_path / "g"), "--prompt-format", "compact", "--max-new-tokens", "3", input="hello\n")
    assert named.returncode == 0 and len(named.stdout.splitlines()) == 1


@pytest.mark.slow
def test_eval_rescores_a_responses_file(quick_run, tmp_path):
    responses = quick_run / "responses.json"
    scores = json.loads((quick_run / "scores.json").read_text(encoding="utf-8"))
    again = gptkit_cli("eval", "--responses", str(responses), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == scores  # the run's own [eval] scorers, from its config.toml
    records = json.loads(responses.read_text(encoding="utf-8"))
    for record in records:
        record["model_response"] = record["output"]
    perfect = tmp_path / "responses.json"
    perfect.write_text(json.dumps(records), encoding="utf-8")
    result = gptkit_cli("eval", "--responses", str(perfect), "--scorer", "exact-match", "--scorer", "rouge-l")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"exact-match: 1.000 over {len(records)} responses"
    assert result.stdout.splitlines()[1].startswith("rouge-l: 1.000")
    perfect.write_text(json.dumps([{"output": "x"}]), encoding="utf-8")
    bad = gptkit_cli("eval", "--responses", str(perfect))
    assert bad.returncode == 2 and "record 0 has no string model_response" in bad.stderr


def test_the_loss_uses_the_collators_ignore_index(tmp_path):
    """Padding targets hold the collator's ignore_index, whatever it is; -1 used to crash the loss."""
    losses = {}
    for ignore in (-100, -1):
        out = tmp_path / str(ignore)
        gptkit.run(load_config(EXPERIMENTS / "quickstart.toml", [
            f"run.out_dir={out}", "train.max_steps=2", "data.dataset.count=200", "run.threads=1", "train.precision=fp32",
            f"data.collator.ignore_index={ignore}", "eval.max_new_tokens=2",
        ]))
        losses[ignore] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] == losses[-100]


@pytest.mark.slow
def test_a_judge_that_is_down_still_leaves_every_other_output(tmp_path):
    from gpt2_fixtures import closed_port_url

    out = tmp_path / "run"
    result = gptkit_cli(
        "run", str(EXPERIMENTS / "quickstart.toml"), f"run.out_dir={out}", "train.max_steps=2", "data.dataset.count=200",
        "run.threads=1", "eval.max_new_tokens=2",
        f"eval.scorers=[{{name = 'exact-match'}}, {{name = 'ollama-judge', url = '{closed_port_url()}'}}]",
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert scores["exact-match"]["n"] == 20 and scores["ollama-judge"]["mean"] is None and scores["ollama-judge"]["error"]
    assert "warning: scorer ollama-judge:" in result.stderr and "ollama-judge: failed:" in result.stdout
    assert (out / "responses.json").is_file()
