"""Dataset `text`: windows as in the original scripts, folders, URLs, the token cache, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptkit.data import split_dataset

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry
from gptkit_plugins import text_data
from gptkit_plugins.tokenizers import ByteTokenizer

TEXT = "Every effort moves you forward, one step at a time.\n" * 8


def build(path, tmp_path, **params):
    ctx = Context(tokenizer=ByteTokenizer())
    spec = Component("text", {"path": str(path), "max_length": 16, "cache_dir": str(tmp_path / "cache"), **params})
    return registry.dataset.build(spec, ctx)


def test_windows_match_the_original_sliding_window(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    windows = build(tmp_path / "a.txt", tmp_path, stride=5)
    ids = ByteTokenizer().encode(TEXT)
    # llms-from-scratch ch02 GPTDatasetV1: for i in range(0, len(ids) - max_length, stride)
    expected = [ids[i : i + 17] for i in range(0, len(ids) - 16, 5)]
    assert [ex.input_ids for ex in windows] == expected
    assert all(ex.prompt_length == 0 for ex in windows)


def test_split_cuts_the_token_stream_by_ratio(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    windows = build(tmp_path / "a.txt", tmp_path)
    parts = split_dataset(windows, [0.9, 0.1])
    train, val = parts["train"], parts["val"]
    n = len(TEXT)
    assert (train.start, train.end, val.start, val.end) == (0, round(0.9 * n), round(0.9 * n), n)
    assert val[0].input_ids == ByteTokenizer().encode(TEXT)[val.start : val.start + 17]
    # cut in another order: val first, then train
    parts = split_dataset(windows, [0.9, 0.1], ["val", "train"])
    assert (parts["val"].start, parts["val"].end, parts["train"].start, parts["train"].end) == (0, round(0.1 * n), round(0.1 * n), n)


def test_a_sequence_is_cut_as_the_original_ch07_cuts_its_records():
    records = list(range(1100))  # train = int(0.85 n), test = int(0.1 n), val = the rest, in file order
    parts = split_dataset(records, [0.85, 0.05, 0.10], ["train", "test", "val"])
    assert (parts["train"][0], parts["train"][-1], len(parts["train"])) == (0, 934, 935)
    assert (parts["test"][0], parts["test"][-1]) == (935, 1044)
    assert (parts["val"][0], parts["val"][-1]) == (1045, 1099)
    assert [len(p) for p in split_dataset(records, [0.9, 0.1]).values()] == [990, 110]


def test_split_too_short_for_a_window_names_the_split(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(GptkitError, match=r"the val split \(2%\) has \d+ tokens, too short for one window of max_length \+ 1 = 17"):
        split_dataset(build(tmp_path / "a.txt", tmp_path), [0.98, 0.02])


def test_folder_joins_documents_with_end_of_text(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second document text", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (folder / "a.txt").write_text("first document text", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    windows = build(folder, tmp_path, max_length=8, stride=1)
    tok = ByteTokenizer()
    expected = tok.encode("first document text") + [tok.eos_id] + tok.encode("second document text") + [tok.eos_id] + tok.encode("third")
    assert windows.tokens.tolist() == expected


def test_tokens_are_cached_by_content_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, encoding="utf-8")
    build(path, tmp_path)
    calls = []
    monkeypatch.setattr(ByteTokenizer, "encode", lambda self, text: calls.append(text) or [])
    assert len(build(path, tmp_path)) > 0 and calls == []  # read back from the cache file
    path.write_text(TEXT + "more", encoding="utf-8")
    with pytest.raises(GptkitError):  # new content: tokenized again (by the stub, to nothing)
        build(path, tmp_path)
    assert calls


@pytest.mark.parametrize(
    "content, message",
    [("", r"the text is empty"), ("short", r"has 5 tokens, too short for one window of 17")],
)
def test_empty_or_short_text(tmp_path, content, message):
    (tmp_path / "a.txt").write_text(content, encoding="utf-8")
    with pytest.raises(GptkitError, match=message):
        build(tmp_path / "a.txt", tmp_path)


def test_non_utf8_text_says_where(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine line\nsecond \xff line\n")
    with pytest.raises(GptkitError, match=r"a\.txt: not UTF-8 text: byte 0xff at line 2, byte offset 17"):
        build(tmp_path / "a.txt", tmp_path)


def test_missing_unreadable_and_empty_folder(tmp_path, monkeypatch):
    with pytest.raises(GptkitError, match="no such file or folder"):
        build(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptkitError, match="folder holds no .txt files"):
        build(tmp_path / "empty", tmp_path)
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(text_data, "open", refuse, raising=False)
    with pytest.raises(GptkitError, match=r"a\.txt: cannot read: Permission denied"):
        build(tmp_path / "a.txt", tmp_path)


def test_url_is_downloaded_once(tmp_path, http_server):
    base, served, requests = http_server
    (served / "story.txt").write_text(TEXT, encoding="utf-8")
    first = build(f"{base}/story.txt", tmp_path)
    second = build(f"{base}/story.txt", tmp_path)
    assert len(first) == len(second) > 0
    assert len(requests) == 1
    assert list((tmp_path / "cache" / "downloads").iterdir())[0].name.endswith("-story.txt")


def test_url_failure_is_one_clear_error(tmp_path, http_server):
    base, _, _ = http_server
    with pytest.raises(GptkitError, match=r"/missing\.txt: HTTP 404.*; check the address, or set data\.dataset\.path"):
        build(f"{base}/missing.txt", tmp_path)
    assert not (tmp_path / "cache").exists()  # no partial file, nor the folders made for it
