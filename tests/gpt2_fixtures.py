"""Test helpers for pretrained weights: random-weight HF GPT-2 models written as OpenAI TF checkpoints
(by TensorFlow, with OpenAI's real variable names) and as HF folders, a tiny GPT-2-style vocabulary,
and a local HTTP file server that can break transfers.

`python tests/gpt2_fixtures.py` (TensorFlow needed) regenerates tests/data/{openai,hf}-tiny, the
checkpoint the tests without TensorFlow read.
"""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from conftest import SHARED_DATA

DATA = Path(__file__).resolve().parent / "data"
OPENAI_TINY = DATA / "openai-tiny"
HF_TINY = DATA / "hf-tiny"
SHARED_GPT2 = SHARED_DATA / "gpt2"
TINY = dict(n_vocab=97, n_ctx=16, n_embd=16, n_head=2, n_layer=2)

# Merges of a tiny vocabulary in GPT-2's spelling (Ġ is a space); each is what BPE would pick.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "m"), ("o", "v"), ("Ġm", "ov"), ("e", "s"), ("Ġmov", "es"),
          ("Ġ", "y"), ("o", "u"), ("Ġy", "ou"), ("E", "v"), ("e", "r"), ("Ev", "er"), ("Ever", "y"), ("Ġ", "e"),
          ("f", "f"), ("Ġe", "ff"), ("o", "r"), ("Ġeff", "or"), ("Ġeffor", "t")]


def write_vocab(folder: Path, encoder: str = "encoder.json", merges: str = "vocab.bpe", real: bool = False) -> None:
    """A tiny GPT-2 vocabulary: the 256 bytes (in GPT-2's order), MERGES, end-of-text at 50256;
    or GPT-2's own when `real` and ../shared/data has it."""
    from gptkit.gpt2_files import data_gym_byte_decoder

    folder.mkdir(parents=True, exist_ok=True)
    if real and SHARED_GPT2.is_dir():
        shutil.copyfile(SHARED_GPT2 / "encoder.json", folder / encoder)
        shutil.copyfile(SHARED_GPT2 / "vocab.bpe", folder / merges)
        return
    vocab = {char: rank for rank, char in enumerate(data_gym_byte_decoder())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = 50256
    (folder / encoder).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / merges).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")


def random_hf_model(n_vocab, n_ctx, n_embd, n_head, n_layer, seed=0, tie=True):
    """A GPT2LMHeadModel whose every parameter (LayerNorm gains and biases too) is moved off its init."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=n_vocab, n_positions=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=tie, bos_token_id=min(50256, n_vocab - 1), eos_token_id=min(50256, n_vocab - 1))
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def write_hf_folder(model, folder: Path, real_vocab: bool = False) -> Path:
    """model.safetensors + config.json by transformers; GPT-2's own vocabulary when `real_vocab` and present."""
    model.save_pretrained(folder, safe_serialization=True)
    write_vocab(folder, "vocab.json", "merges.txt", real=real_vocab)
    return folder


def openai_variables(model, drop=(), extra=None) -> dict:
    """OpenAI's variable names and layouts for an HF model (HF's Conv1D [in, out] is OpenAI's [1, in, out])."""
    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in model.state_dict().items()}
    out = {"model/wte": sd["wte.weight"], "model/wpe": sd["wpe.weight"],
           "model/ln_f/g": sd["ln_f.weight"], "model/ln_f/b": sd["ln_f.bias"]}
    for i in range(model.config.n_layer):
        for ln in ("ln_1", "ln_2"):
            out[f"model/h{i}/{ln}/g"] = sd[f"h.{i}.{ln}.weight"]
            out[f"model/h{i}/{ln}/b"] = sd[f"h.{i}.{ln}.bias"]
        for conv in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            hf = f"h.{i}.{conv.replace('/', '.')}"
            out[f"model/h{i}/{conv}/w"] = sd[hf + ".weight"][None]
            out[f"model/h{i}/{conv}/b"] = sd[hf + ".bias"]
    for name in drop:
        del out[name]
    out.update(extra or {})
    return out


def write_openai_folder(model, folder: Path, drop=(), extra=None, real_vocab: bool = False,
                        writer: str = "tensorflow") -> Path:
    """The seven files of an OpenAI GPT-2 size. `writer`: "tensorflow" writes the checkpoint with
    TensorFlow itself (SaveV2); "python" with tests/tf_bundle_writer.py, for tests that need OpenAI's
    layout but not TensorFlow's own bytes, so they run where TensorFlow is not installed."""
    folder.mkdir(parents=True, exist_ok=True)
    variables = openai_variables(model, drop, extra)
    if writer == "python":
        from tf_bundle_writer import write_bundle

        write_bundle(folder / "model.ckpt", variables)
    else:
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        names = sorted(variables)
        tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(variables[n]) for n in names])
    c = model.config
    hparams = dict(n_vocab=c.vocab_size, n_ctx=c.n_positions, n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer)
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2), encoding="utf-8")
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    (folder / "model.ckpt.meta").write_bytes(b"meta graph: not read by gptkit")
    write_vocab(folder, real=real_vocab)
    return folder


@contextmanager
def no_warnings(ignore: tuple[type[Warning], ...] = ()):
    """Fails if Python warns (but for the `ignore` categories) or transformers / huggingface_hub log
    a warning inside the block."""
    from transformers.utils import logging as hf_logging

    logged = []

    class Collect(logging.Handler):
        def emit(self, record):
            logged.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    loggers = [hf_logging.get_logger(), logging.getLogger("huggingface_hub")]
    for logger in loggers:
        logger.addHandler(handler)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        hf_logging.enable_progress_bar()
    assert [str(w.message) for w in caught if not issubclass(w.category, ignore)] == [] and logged == []


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class FileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 with Range support. `cut[path] = n` sends only
    the first n bytes of the next `cut_times` answers for that path (announcing the full length), then
    drops the connection; `ignore_range` answers every request in full. `requests` logs (path, Range)."""

    def __init__(self, files: dict[str, bytes], cut: dict[str, int] | None = None, cut_times: int = 1,
                 ignore_range: bool = False):
        self.files, self.cut, self.cut_times, self.ignore_range = files, dict(cut or {}), cut_times, ignore_range
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                limit = server.cut.get(self.path)
                if limit is not None and server.cut_times > 0:
                    server.cut_times -= 1
                    self.wfile.write(body[start : start + limit])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_folder(folder: Path, size: str = "124M", **kwargs) -> FileServer:
    return FileServer({f"/{size}/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}, **kwargs)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    model = random_hf_model(**TINY, seed=1234)
    for folder in (OPENAI_TINY, HF_TINY):
        shutil.rmtree(folder, ignore_errors=True)
    write_openai_folder(model, OPENAI_TINY)
    write_hf_folder(model, HF_TINY)
    print(f"wrote {OPENAI_TINY} and {HF_TINY}")
