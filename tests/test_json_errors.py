"""Malformed JSON, wherever gptkit reads it, is one error naming the file, line and column and
saying why in a whole phrase (json's own messages end mid-phrase: "Unterminated string starting at")."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gptkit.checkpoint import load_model_files, verify
from gptkit.cli import cli
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.json_errors import JSON_REASONS, json_reason, malformed_json
from gptkit.gpt2_files import read_gpt2_json
from gptkit.interfaces import Context
from gptkit.plugins import registry
from gptkit.training import read_metrics

UNCLOSED = "a string starts there and is never closed"

MALFORMED = ['["abc', '{"a": 1,}', "[1, 2", '{"a" 1}', "[1] x", '"a\tb"', '"\\q"', '"\\u12"', "", "[1,]", "{1: 2}", "tru"]


@pytest.mark.parametrize("text", MALFORMED)
def test_every_json_message_is_said_as_a_whole_phrase(text):
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(text)
    assert caught.value.msg in JSON_REASONS  # this Python's messages are all known
    assert not json_reason(caught.value).endswith(" at")


def test_a_json_lines_line_is_placed_in_its_file():
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads('{"a": "b')
    assert malformed_json("x.jsonl", caught.value, line=7) == f"x.jsonl: malformed JSON at line 7, column 7: {UNCLOSED}"


def test_instruction_data_array_and_lines(tmp_path):
    def error(name, text):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(GptkitError) as caught:
            registry.dataset.build(Component("alpaca-json", {"path": str(tmp_path / name)}), Context())
        return str(caught.value)

    assert error("a.json", '[\n {"instruction": "x", "output": "y}') == f"{tmp_path / 'a.json'}: malformed JSON at line 2, column 33: {UNCLOSED}"
    message = error("b.jsonl", '{"instruction": "x", "output": "y"}\n{"instruction": "x\n')
    assert f"b.jsonl: record 1 (line 2): malformed JSON at column 17: {UNCLOSED} (expected " in message


def test_eval_responses(tmp_path):
    (tmp_path / "responses.json").write_text('[{"output": "a", "model_response": "b}]', encoding="utf-8")
    result = CliRunner().invoke(cli, ["eval", "--responses", str(tmp_path / "responses.json"), "--scorer", "exact-match"])
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path / 'responses.json'}: malformed JSON at line 1, column 36: {UNCLOSED}\n"


def test_hparams_json(tmp_path):
    (tmp_path / "hparams.json").write_text('{"n_vocab": 97,\n "n_ctx": }', encoding="utf-8")
    with pytest.raises(GptkitError, match=r"hparams\.json: malformed JSON at line 2, column 11: a value was expected$"):
        read_gpt2_json(tmp_path / "hparams.json", ["n_vocab"])


def test_metrics_jsonl(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "loss": "x}\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(GptkitError) as caught:
        read_metrics(tmp_path / "metrics.jsonl")
    assert str(caught.value) == (f"{tmp_path / 'metrics.jsonl'}: line 2 is not a metrics row (malformed JSON at column 21: {UNCLOSED}); "
                                 "correct or delete that line")


def test_model_folder_config_and_checksums(tmp_path):
    (tmp_path / "config.json").write_text('{"format": "gptkit"', encoding="utf-8")
    with pytest.raises(GptkitError, match=r"config\.json: malformed JSON at line 1, column 20: a comma was expected$"):
        load_model_files(tmp_path)
    (tmp_path / "checksums.json").write_text('{"files": {"model.safetensors": {"size": 1,}}}', encoding="utf-8")
    with pytest.raises(GptkitError, match=r"checksums\.json: malformed JSON at line 1, column 44: a key in double quotes was expected$"):
        verify(tmp_path, state=False)


def test_hf_shard_index(tmp_path):
    from gptkit_plugins.hf import read_weights

    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "b"} "x": 1}', encoding="utf-8")
    with pytest.raises(GptkitError, match=r"model\.safetensors\.index\.json: malformed JSON at line 1, column 27: a comma was expected$"):
        read_weights(tmp_path)


def test_sweep_state(tmp_path, monkeypatch):
    pytest.importorskip("sweeps")
    from test_trackers import tiny_experiment

    tiny_experiment(tmp_path)
    (tmp_path / "grid.yaml").write_text(
        "program: tiny.toml\nmethod: grid\nmetric: {name: val_loss}\nparameters:\n  train.lr: {values: [0.001]}\n", encoding="utf-8")
    (tmp_path / "runs" / "grid").mkdir(parents=True)
    (tmp_path / "runs" / "grid" / "sweep.json").write_text('{"spec": {"method": "grid}', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", "grid.yaml", "--offline", "--resume"])
    assert result.exit_code == 2
    assert result.output == f"error: {'runs/grid/sweep.json'}: malformed JSON at line 1, column 21: {UNCLOSED}\n"
