import pytest

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, Tokenizer
from gptkit.plugins import registry


def tokenizer(name, **params):
    return registry.tokenizer.build(Component(name, params), Context())


def test_bytes_tokenizer_round_trip_and_eos():
    tok = tokenizer("bytes")
    assert isinstance(tok, Tokenizer) and tok.vocab_size == 257 and tok.eos_id == 256
    ids = tok.encode("héllo<|endoftext|>!")
    assert ids[-2:] == [256, ord("!")]
    assert tok.decode(ids) == "héllo!"


def test_gpt2_from_openai_files(gpt2_vocab):
    tok = tokenizer("gpt2", path=str(gpt2_vocab))
    assert tok.encode("Hello, world") == [15496, 11, 995]
    assert tok.encode("<|endoftext|>") == [50256] and tok.vocab_size == 50257
    assert tok.decode(tok.encode("Every effort moves you")) == "Every effort moves you"


def test_gpt2_from_tiktoken_file_and_save(gpt2_vocab, tmp_path):
    tok = tokenizer("gpt2", path=str(gpt2_vocab))
    spec = tok.save(tmp_path)
    again = tokenizer("gpt2", path=str(tmp_path / spec["path"]))
    text = "Ünïcode and numbers 12345, spaces   and\nnewlines"
    assert again.encode(text) == tok.encode(text)


def test_gpt2_from_tiktoken_cache(gpt2_vocab):
    """tiktoken's own loader (its cache is seeded from ../shared/data in CI)."""
    import tiktoken

    try:
        tiktoken.get_encoding("gpt2")
    except Exception:
        pytest.skip("tiktoken's cache has no GPT-2 vocabulary (run ../shared/data/seed-tiktoken-cache.py)")
    assert tokenizer("gpt2").encode("Hello, world") == [15496, 11, 995]


def test_gpt2_missing_files_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(GptkitError, match="encoder.json"):
        tokenizer("gpt2", path=str(tmp_path))
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(GptkitError, match="data.tokenizer.path"):
        tokenizer("gpt2")


def test_gpt2_corrupt_files(tmp_path, gpt2_vocab):
    (tmp_path / "encoder.json").write_text("{not json")
    (tmp_path / "vocab.bpe").write_bytes((gpt2_vocab / "vocab.bpe").read_bytes())
    with pytest.raises(GptkitError, match="not a readable GPT-2 vocabulary"):
        tokenizer("gpt2", path=str(tmp_path))
