"""Instruction datasets: `alpaca-json` against the original ch07 on the shipped file, its every bad
input, and `synthetic-tasks`' answers, unique inputs and determinism."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import SHARED_DATA
from gptkit.config import Component
from gptkit.data import split_dataset
from gptkit.errors import GptkitError, RegistryError
from gptkit.interfaces import Context
from gptkit.model import GPTConfig
from gptkit.plugins import registry
from gptkit_plugins.prompts import ALPACA, COMPACT
from gptkit_plugins.synthetic_tasks import FAMILIES, task_records
from gptkit_plugins.tokenizers import ByteTokenizer

RECORDS = [
    {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue.", "source": "hand"},
    {"instruction": "Say hi.", "output": "Hi!"},  # no input: taken as ""
]


def ctx(prompt=COMPACT, context_length=64, tokenizer=None):
    model_config = GPTConfig(vocab_size=257, context_length=context_length, emb_dim=8, n_heads=2, n_layers=1)
    return Context(model_config=model_config, tokenizer=tokenizer or ByteTokenizer(), prompt=prompt)


def build(path, tmp_path, context=None, **params):
    spec = Component("alpaca-json", {"path": str(path), "cache_dir": str(tmp_path / "cache"), **params})
    return registry.dataset.build(spec, context or ctx())


def write(tmp_path, text, name="data.json"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / name


def test_the_shipped_file_encodes_as_the_originals_instruction_dataset(tmp_path, gpt2_vocab, ch07):
    path = SHARED_DATA / "instruction-data.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    tokenizer = registry.tokenizer.build(Component("gpt2", {"path": str(gpt2_vocab)}), Context())
    examples = build(path, tmp_path, ctx(ALPACA, 1024, tokenizer))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(examples, list) and len(examples) == len(data) == 1100
    reference = ch07.InstructionDataset(data, tokenizer)
    for i, (example, record) in enumerate(zip(examples, data)):
        assert example.input_ids == reference[i]
        assert example.prompt_length == len(tokenizer.encode(ch07.format_input(record) + "\n\n### Response:\n"))
        assert example.record == record
    parts = split_dataset(examples, [0.85, 0.05, 0.10], ["train", "test", "val"])
    assert [len(parts[p]) for p in ("train", "test", "val")] == [935, 110, 55]
    assert parts["test"][0].record == data[935]


def test_json_array_and_json_lines_give_the_same_examples(tmp_path):
    tokenizer = ByteTokenizer()
    from_array = build(write(tmp_path, json.dumps(RECORDS, indent=2)), tmp_path)
    lines = "\ufeff" + "\n\n".join(json.dumps(r) for r in RECORDS) + "\r\n\n"  # a BOM, blank lines, CRLF
    from_lines = build(write(tmp_path, lines, "data.jsonl"), tmp_path)
    assert from_array == from_lines
    for example, record in zip(from_array, RECORDS):
        prompt, response = COMPACT(record)
        assert example.input_ids == tokenizer.encode(prompt + response)
        assert example.prompt_length == len(prompt.encode())
        assert example.record == record  # extra fields kept, nothing added
    assert from_array[2].input_ids == tokenizer.encode("Say hi.\n=Hi!")


def error_of(tmp_path, text=None, path=None, **params):
    """The one-line error of building from `path`, or from data.json holding `text`."""
    with pytest.raises(GptkitError) as caught:
        build(path or write(tmp_path, text), tmp_path, **params)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "records,expected",
    [
        ([RECORDS[0], {"instruction": "x", "input": ""}], r"data.json: record 1: missing field 'output'"),
        ([{"input": "", "output": "y"}], r"data.json: record 0: missing field 'instruction'"),
        ([RECORDS[0], RECORDS[1], {"instruction": "x", "input": None, "output": "y"}], r"data.json: record 2: field 'input' must be a string, got null"),
        ([{"instruction": 3, "input": "", "output": "y"}], r"record 0: field 'instruction' must be a string, got a number"),
        ([{"instruction": "x", "input": "", "output": ["y"]}], r"record 0: field 'output' must be a string, got an array"),
        ([RECORDS[0], ["x", "", "y"]], r"record 1: expected an object with fields instruction, input, output, got an array"),
        ([RECORDS[0], "text"], r"record 1: expected an object .*, got a string"),
    ],
)
def test_a_bad_record_names_file_record_and_field(tmp_path, records, expected):
    message = error_of(tmp_path, json.dumps(records))
    assert re.search(expected, message), message
    assert "on_bad_record" in message


def test_malformed_json_names_line_and_column(tmp_path):
    message = error_of(tmp_path, '[\n  {"instruction": "x",\n    "output": y}\n]')
    assert "data.json: malformed JSON at line 3, column 15: a value was expected" in message
    message = error_of(tmp_path, json.dumps(RECORDS[0]) + '\n\n{"instruction": "x", output: "y"}\n')
    assert "data.json: record 1 (line 3): malformed JSON at column 22: a key in double quotes was expected" in message
    assert "one record per line" in message


def test_non_utf8_bytes_name_line_and_byte(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"instruction": "x", "input": "",\n "output": "caf\xe9"}]')
    assert "data.json: not UTF-8 text: byte 0xe9 at line 2, byte offset 50" in error_of(tmp_path, path=path)


@pytest.mark.parametrize("text", ["", "\n\n", "[]", "[\n]"])
def test_no_records_is_an_error(tmp_path, text):
    assert "data.json: holds no records (expected a JSON array of records, or JSON Lines" in error_of(tmp_path, text)


def test_missing_file_and_folder(tmp_path):
    assert "nothing.json: cannot read: No such file or directory" in error_of(tmp_path, path=tmp_path / "nothing.json")
    (tmp_path / "folder").mkdir()
    assert "folder: is a folder; expected a file holding" in error_of(tmp_path, path=tmp_path / "folder")


def test_skip_drops_bad_records_and_says_how_many(tmp_path, capsys):
    lines = [json.dumps(RECORDS[0]), "{broken", json.dumps({"instruction": "x"}), json.dumps(RECORDS[1]), "[1]"]
    examples = build(write(tmp_path, "\n".join(lines), "data.jsonl"), tmp_path, on_bad_record="skip")
    assert [ex.record for ex in examples] == [RECORDS[0], RECORDS[1]]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.jsonl: skipped 3 of 5 records" in err[0]
    assert "(first: " in err[0] and "record 1 (line 2): malformed JSON" in err[0]
    message = error_of(tmp_path, json.dumps([{"instruction": "x"}, 5]), on_bad_record="skip")
    assert "data.json: no usable records: all 2 are bad (first: " in message and "record 0: missing field 'output'" in message


def test_records_too_long_are_cut_or_dropped_and_counted(tmp_path, capsys):
    long = {"instruction": "Repeat it.", "input": "abc" * 10, "output": "abc" * 10}  # 75 bytes in compact
    path = write(tmp_path, json.dumps([RECORDS[0], long, RECORDS[1]]))
    examples = build(path, tmp_path, max_length=30)
    assert [len(ex.input_ids) for ex in examples] == [len("Reverse the word.\ncat\n=tac"), 30, len("Name a colour.\n=Blue.")]
    prompt, response = COMPACT(long)
    assert examples[1].input_ids == ByteTokenizer().encode(prompt + response)[:30] and examples[1].prompt_length == 30
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: 1 of 3 records are longer than max_length = 30 tokens: cut to that length"]
    dropped = build(path, tmp_path, on_too_long="drop", max_length=26)
    assert [ex.record for ex in dropped] == [RECORDS[0], RECORDS[1]]
    assert capsys.readouterr().err.strip() == f"{path}: 1 of 3 records are longer than max_length = 26 tokens: dropped"
    # no max_length: the model's context length
    assert len(build(path, tmp_path, ctx(context_length=30))[1].input_ids) == 30
    message = error_of(tmp_path, json.dumps([long, long]), on_too_long="drop", max_length=10)
    assert "data.json: all 2 records are longer than max_length = 10 tokens; raise data.dataset.max_length" in message


def test_what_the_context_must_hold(tmp_path):
    path = write(tmp_path, json.dumps(RECORDS))
    with pytest.raises(GptkitError, match=r"needs a prompt format: set \[data\] prompt, e.g. \{ name = \"alpaca\" \}"):
        build(path, tmp_path, ctx(prompt=None))
    with pytest.raises(GptkitError, match=r"needs a tokenizer"):
        build(path, tmp_path, Context(prompt=COMPACT))
    with pytest.raises(GptkitError, match=r"max_length: required when no model is built yet"):
        build(path, tmp_path, Context(tokenizer=ByteTokenizer(), prompt=COMPACT))
    assert len(build(path, tmp_path, Context(tokenizer=ByteTokenizer(), prompt=COMPACT), max_length=64)) == 3
    with pytest.raises(GptkitError, match=r"max_length = 65 exceeds the model's context length 64"):
        build(path, tmp_path, max_length=65)


def test_bad_parameters(tmp_path):
    for params in ({"on_bad_record": "ignore"}, {"on_too_long": "wrap"}, {"max_length": 0}):
        with pytest.raises(RegistryError, match=next(iter(params))):
            build(tmp_path / "x.json", tmp_path, **params)


def test_url_is_downloaded_once_and_a_failure_is_the_downloaders_error(tmp_path, http_server):
    base, served, requests = http_server
    (served / "instruction-data.json").write_text(json.dumps(RECORDS), encoding="utf-8")
    first = build(f"{base}/instruction-data.json", tmp_path)
    assert build(f"{base}/instruction-data.json", tmp_path) == first and len(first) == 3
    assert len(requests) == 1
    message = error_of(tmp_path, path=f"{base}/missing.json")
    assert "/missing.json: HTTP 404" in message and "set data.dataset.path to a local file" in message


# --- synthetic-tasks --------------------------------------------------------------------------------


def synthetic(context=None, **params):
    return registry.dataset.build(Component("synthetic-tasks", params), context or ctx())


def test_answers_are_right_and_families_take_turns():
    records = task_records(seed=1, count=400, families=list(FAMILIES), word_length=(3, 7))
    assert [r["family"] for r in records[:8]] == ["reverse", "uppercase", "sort", "add"] * 2
    for r in records:
        text = r["input"]
        expected = {
            "reverse": lambda: "".join(reversed(text)),
            "uppercase": lambda: text.upper(),
            "sort": lambda: "".join(sorted(text)),
            "add": lambda: str(int(text.split("+")[0]) + int(text.split("+")[1])),
        }[r["family"]]()
        assert r["output"] == expected and r["instruction"] == FAMILIES[r["family"]].instruction
        if r["family"] == "add":
            a, b = map(int, text.split("+"))
            assert 0 <= a < 100 and 0 <= b < 100
        else:
            assert text.isalpha() and text.islower() and 3 <= len(text) <= 7


def test_every_input_is_unique_so_held_out_inputs_are_unseen():
    records = task_records(seed=0, count=4000, families=["reverse", "sort", "add"], word_length=(3, 3))
    assert len({r["input"] for r in records}) == 4000
    parts = split_dataset(records, [0.8, 0.1, 0.1])
    train_inputs = {r["input"] for r in parts["train"]}
    assert not train_inputs & {r["input"] for r in parts["val"] + parts["test"]}
    # the whole pool can be used, and not more than it
    assert sorted(r["input"] for r in task_records(0, 26, ["reverse"], (1, 1))) == list("abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(GptkitError, match=r"27 distinct word inputs are needed but only 26 exist"):
        task_records(0, 27, ["reverse"], (1, 1))
    with pytest.raises(GptkitError, match=r"10001 distinct sum inputs are needed but only 10000 exist"):
        task_records(0, 10001, ["add"], (3, 7))


def test_same_seed_same_records_in_any_process_and_hash_seed():
    records = task_records(seed=7, count=50, families=list(FAMILIES), word_length=(3, 7))
    assert task_records(seed=7, count=50, families=list(FAMILIES), word_length=(3, 7)) == records
    assert task_records(seed=8, count=50, families=list(FAMILIES), word_length=(3, 7)) != records
    code = (
        "import json; from gptkit_plugins.synthetic_tasks import FAMILIES, task_records; "
        "print(json.dumps(task_records(7, 50, list(FAMILIES), (3, 7))))"
    )
    other_hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # this process's differs
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": other_hash_seed}, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == records


def test_synthetic_examples_fit_a_small_byte_model_in_the_compact_format():
    examples = synthetic(count=200, seed=3)
    assert len(examples) == 200 and max(len(ex.input_ids) for ex in examples) <= len("Uppercase the word.\nabcdefg\n=ABCDEFG")
    for ex in examples:
        prompt, response = COMPACT(ex.record)
        assert ex.input_ids == list((prompt + response).encode()) and ex.prompt_length == len(prompt)
    assert [ex.record for ex in synthetic(count=200, seed=3)] == [ex.record for ex in examples]
    # in the Alpaca format the same records need a bigger context: cut to it, or dropped
    assert all(len(ex.input_ids) == 64 for ex in synthetic(ctx(ALPACA), count=8))
    with pytest.raises(GptkitError, match=r"synthetic-tasks: all 8 records are longer than max_length = 64"):
        synthetic(ctx(ALPACA), count=8, on_too_long="drop")


def test_synthetic_parameters_are_checked():
    for params, message in [
        ({"families": ["reverse", "rot13"]}, "'families' must be a list of distinct names"),
        ({"families": []}, "families"),
        ({"families": ["add", "add"]}, "families"),
        ({"word_length": [5, 3]}, "word_length"),
        ({"word_length": [0, 3]}, "word_length"),
        ({"count": 0}, "count"),
    ]:
        with pytest.raises(RegistryError, match=message):
            synthetic(**params)
    assert {ex.record["family"] for ex in synthetic(families=["sort"], count=5)} == {"sort"}
