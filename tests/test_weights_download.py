"""Downloading OpenAI's GPT-2 files from a local HTTP server: resume after a broken transfer (Range),
404, refused connections, disk full, a corrupt download; nothing half-written ever looks complete."""

from __future__ import annotations

import errno
import io

import pytest
import torch
from click.testing import CliRunner

from gpt2_fixtures import OPENAI_TINY, FileServer, closed_port_url, serve_folder
from gptkit.cli import cli
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry
from gptkit.sources import load_model, load_source
from gptkit import download as pretrained
from gptkit_plugins import openai_tf

DATA = "model.ckpt.data-00000-of-00001"


def loader(tmp_path, base_url):
    return registry.checkpoint.build(Component("openai-tf", {"dir": str(tmp_path / "cache"), "base_url": base_url}), Context())


def same_files(folder) -> bool:
    return all((folder / name).read_bytes() == (OPENAI_TINY / name).read_bytes() for name in openai_tf.FILES)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name == openai_tf.COMPLETE)


def test_download_resumes_a_broken_transfer_with_range(tmp_path):
    with serve_folder(OPENAI_TINY, cut={f"/124M/{DATA}": 10_000}) as server:
        folder = loader(tmp_path, server.url).download("gpt2-124M")
    assert folder == tmp_path / "cache" / "124M"
    assert same_files(folder) and openai_tf.is_complete(folder)
    data_requests = [rng for path, rng in server.requests if path == f"/124M/{DATA}"]
    assert data_requests == [None, "bytes=10000-"]
    assert leftovers(folder) == [openai_tf.COMPLETE]


def test_download_resumes_in_a_later_call_and_then_loads(tmp_path):
    with serve_folder(OPENAI_TINY, cut={f"/124M/{DATA}": 3000}, cut_times=100) as server:
        with pytest.raises(GptkitError, match=f"{DATA}.part is kept"):
            loader(tmp_path, server.url).download("gpt2")
    folder = tmp_path / "cache" / "124M"
    assert not (folder / DATA).exists() and not openai_tf.is_complete(folder)
    kept = (folder / f"{DATA}.part").stat().st_size
    assert kept == 3000 * (pretrained.RETRIES + 1)
    with serve_folder(OPENAI_TINY) as server:
        loaded = loader(tmp_path, server.url).load()  # default model gpt2-124M: downloads what is left
    assert server.requests[0] == (f"/124M/{DATA}", f"bytes={kept}-")  # then the files not fetched before
    assert [p for p, _ in server.requests[1:]] == ["/124M/model.ckpt.index", "/124M/model.ckpt.meta", "/124M/vocab.bpe"]
    assert same_files(folder) and loaded.model_config.emb_dim == 16


def test_server_that_ignores_range_restarts_the_file(tmp_path):
    with serve_folder(OPENAI_TINY, cut={f"/124M/{DATA}": 5000}, ignore_range=True) as server:
        folder = loader(tmp_path, server.url).download("124M")
    assert same_files(folder)


def test_404_names_the_file_and_url_and_nothing_looks_complete(tmp_path):
    files = {f"/124M/{p.name}": p.read_bytes() for p in OPENAI_TINY.iterdir() if p.name != "vocab.bpe"}
    with FileServer(files) as server:
        with pytest.raises(GptkitError) as info:
            loader(tmp_path, server.url).download("gpt2-124M")
    message = str(info.value)
    assert "vocab.bpe" in message and f"{server.url}/124M/vocab.bpe: HTTP 404" in message
    folder = tmp_path / "cache" / "124M"
    assert not openai_tf.is_complete(folder) and leftovers(folder) == []


def test_each_base_url_is_tried_in_turn(tmp_path, monkeypatch):
    dead = closed_port_url()
    with serve_folder(OPENAI_TINY) as server:
        monkeypatch.setattr(openai_tf, "BASE_URLS", (dead, server.url))
        folder = loader(tmp_path, None).download("gpt2-124M")
    assert openai_tf.is_complete(folder)


def test_connection_refused_is_a_clear_error(tmp_path):
    dead = closed_port_url()
    with pytest.raises(GptkitError) as info:
        loader(tmp_path, dead).download("gpt2-124M")
    message = str(info.value)
    assert "\n" not in message and "could not download checkpoint" in message and "refused" in message.lower()


def test_a_download_that_gets_nothing_leaves_no_folder_and_says_what_to_do_offline(tmp_path):
    """Refused, 404 on the first file, a connection that breaks before its first byte: no empty
    355M/ folder (nor the cache folders made for it), no empty .part; the error says what to do."""
    files = {f"/355M/{p.name}": p.read_bytes() for p in OPENAI_TINY.iterdir()}
    with FileServer({}) as empty, FileServer(files, cut={"/355M/checkpoint": 0}, cut_times=100) as breaks:
        for base_url in (closed_port_url(), empty.url, breaks.url):
            with pytest.raises(GptkitError) as info:
                loader(tmp_path, base_url).download("gpt2-medium")
            message = str(info.value)
            assert "\n" not in message and f"could not download checkpoint into {tmp_path / 'cache' / '355M'}: {base_url}/355M/checkpoint" in message
            assert message.endswith(f"; offline? run `gptkit download gpt2-355M` on a machine with internet, copy the folder it prints "
                                    f"to {tmp_path / 'cache' / '355M'}, or anywhere and name that folder as the model "
                                    "(init.checkpoint.model=FOLDER in an experiment)")
            assert not (tmp_path / "cache").exists(), base_url


def test_a_download_cut_after_some_files_keeps_them_to_resume(tmp_path):
    files = {f"/124M/{p.name}": p.read_bytes() for p in OPENAI_TINY.iterdir() if p.name != DATA}
    with FileServer(files) as server:
        with pytest.raises(GptkitError, match="offline\\? run `gptkit download gpt2-124M`"):
            loader(tmp_path, server.url).download("gpt2-124M")
    kept = sorted(p.name for p in (tmp_path / "cache" / "124M").iterdir())
    assert kept == ["checkpoint", "encoder.json", "hparams.json"]  # FILES before the data file: not fetched again


def test_instruct_medium_offline_is_one_line_with_a_hint_and_leaves_nothing(tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.setenv("GPTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTKIT_OPENAI_BASE_URL", closed_port_url())
    result = CliRunner().invoke(cli, ["run", str(ROOT / "experiments" / "instruct_medium.toml"), f"run.out_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: could not download checkpoint into ") and "`gptkit download gpt2-355M`" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache folder, no run folder


def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch):
    real_open = open

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)  # creates the .part, as a real full disk would
        if str(path).endswith(f"{DATA}.part"):
            f.close()
            return FullDisk()
        return f

    monkeypatch.setattr(pretrained, "open", fake_open, raising=False)
    with serve_folder(OPENAI_TINY) as server:
        with pytest.raises(GptkitError) as info:
            loader(tmp_path, server.url).download("gpt2-124M")
    folder = tmp_path / "cache" / "124M"
    assert str(info.value) == f"{folder / DATA}: cannot write (No space left on device)"
    assert not (folder / DATA).exists() and leftovers(folder) == []


def test_corrupt_download_is_removed_and_never_marked_complete(tmp_path):
    files = {f"/124M/{p.name}": p.read_bytes() for p in OPENAI_TINY.iterdir()}
    broken = bytearray(files[f"/124M/{DATA}"])
    broken[2000] ^= 0xFF
    files[f"/124M/{DATA}"] = bytes(broken)
    with FileServer(files) as server:
        with pytest.raises(GptkitError, match="removed; run again") as info:
            loader(tmp_path, server.url).download("gpt2-124M")
    folder = tmp_path / "cache" / "124M"
    assert str(folder / "model.ckpt") in str(info.value)
    assert not openai_tf.is_complete(folder) and not (folder / DATA).exists()


def test_a_complete_folder_is_not_downloaded_again_unless_changed(tmp_path):
    with serve_folder(OPENAI_TINY) as server:
        folder = loader(tmp_path, server.url).download("gpt2-124M")
        n = len(server.requests)
        loader(tmp_path, server.url).download("gpt2-124M")
        assert len(server.requests) == n
        with open(folder / DATA, "ab") as f:
            f.write(b"x")  # changed since verified: not complete any more
        assert not openai_tf.is_complete(folder)


def test_model_names_resolve_through_sources_and_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_CACHE", str(tmp_path / "cache"))
    with serve_folder(OPENAI_TINY, size="355M") as server:
        monkeypatch.setenv("GPTKIT_OPENAI_BASE_URL", server.url)
        result = CliRunner().invoke(cli, ["download", "gpt2-medium"])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(tmp_path / "cache" / "openai-gpt2" / "355M")
        model, tokenizer = load_model("gpt2-355M")
        assert model.config.emb_dim == 16 and tokenizer.name == "gpt2"
        result = CliRunner().invoke(cli, ["download", "gpt2-124M", "--dir", str(tmp_path / "elsewhere")])
        assert result.exit_code == 2 and "HTTP 404" in result.output
        result = CliRunner().invoke(cli, ["download", "gpt5"])
        assert result.exit_code == 2 and "'gpt5' is not an OpenAI GPT-2 size" in result.output
    with torch.no_grad():
        assert load_source("gpt2-medium").model_config.n_layers == 2  # now from the cache, no server
