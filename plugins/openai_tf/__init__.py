"""`openai-tf`: OpenAI's GPT-2 checkpoints (TensorFlow format), downloaded and mapped into gptkit's names.

A size's folder holds seven files (FILES below). The checkpoint is read with TensorFlow when it is
installed, else with gptkit's own reader of TensorFlow's tensor-bundle format (no TensorFlow needed).
OpenAI's layers are 1x1 convolutions, weights [1, in, out]; gptkit's are nn.Linear, [out, in], so
each is squeezed and transposed. c_attn's output is q|k|v, the order of gptkit's fused `attn.qkv`,
so it needs no split. A downloaded folder is marked complete (`.complete`) only after every tensor
was read with the shape hparams.json implies; until then it is never loaded as valid.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch

from gptkit import hookimpl
from gptkit.schema import Component, path_field
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel
from gptkit.model import GPTConfig
from gptkit.presets import resolve_preset
from gptkit.plugins import registry
from gptkit.files import atomic_write_text
from gptkit.weights import check_tensors
from gptkit_plugins.openai_tf import tf_bundle
from gptkit.download import DownloadError, cache_dir, fetch, offline_hint
from gptkit.gpt2_files import gpt2_name_map, read_gpt2_json

SIZES = {"gpt2-124M": "124M", "gpt2-355M": "355M", "gpt2-774M": "774M", "gpt2-1558M": "1558M"}
PREFIX = "model.ckpt"
DATA = f"{PREFIX}.data-00000-of-00001"
INDEX = f"{PREFIX}.index"
FILES = ("checkpoint", "encoder.json", "hparams.json", DATA, INDEX, f"{PREFIX}.meta", "vocab.bpe")
NEEDED = ("hparams.json", INDEX, DATA, "encoder.json", "vocab.bpe")  # what loading reads
BASE_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/models",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2",  # the book's backup
)
COMPLETE = ".complete"
HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def openai_size(name: str) -> str | None:
    """OpenAI's folder name ("355M") for a preset, alias or folder name, else None."""
    preset = resolve_preset(name) or resolve_preset(f"gpt2-{name}")
    return SIZES.get(preset) if preset else None


# --- the mapping ------------------------------------------------------------------------------


def name_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """(OpenAI variable, gptkit parameter, is a [1, in, out] convolution weight) for every tensor.

    OpenAI spells HF's `h.0.ln_1.weight` as `model/h0/ln_1/g` (gains g, weights w, biases b) and the
    embeddings as plain `model/wte`, `model/wpe`."""

    def spell(block, module, param):
        if module in ("wte", "wpe"):
            return f"model/{module}"
        short = "b" if param == "bias" else "g" if module.startswith("ln") else "w"
        return f"model/{'' if block is None else f'h{block}/'}{module.replace('.', '/')}/{short}"

    return gpt2_name_map(n_layer, spell)


def expected_shapes(h: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every variable of a checkpoint with hyperparameters `h` (hparams.json)."""
    d = h["n_embd"]
    shapes = {"model/wte": (h["n_vocab"], d), "model/wpe": (h["n_ctx"], d), "model/ln_f/g": (d,), "model/ln_f/b": (d,)}
    for i in range(h["n_layer"]):
        p = f"model/h{i}/"
        for norm in ("ln_1", "ln_2"):
            shapes[f"{p}{norm}/g"] = shapes[f"{p}{norm}/b"] = (d,)
        for conv, (n_in, n_out) in {
            "attn/c_attn": (d, 3 * d), "attn/c_proj": (d, d), "mlp/c_fc": (d, 4 * d), "mlp/c_proj": (4 * d, d)
        }.items():
            shapes[f"{p}{conv}/w"] = (1, n_in, n_out)
            shapes[f"{p}{conv}/b"] = (n_out,)
    return shapes


def to_gptkit(variables: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """OpenAI's variables -> gptkit's state dict (works on meta tensors too); the head is tied."""
    state = {pt: variables[tf].squeeze(0).t().contiguous() if conv else variables[tf] for tf, pt, conv in name_map(n_layer)}
    state["head.weight"] = state["tok_emb.weight"]
    return state


def config_from_hparams(h: dict[str, int]) -> GPTConfig:
    """GPT-2 as OpenAI trained it: biased qkv, tied head, LayerNorm eps 1e-5, tanh GELU, 4x MLP."""
    return GPTConfig(
        vocab_size=h["n_vocab"],
        context_length=h["n_ctx"],
        emb_dim=h["n_embd"],
        n_heads=h["n_head"],
        n_layers=h["n_layer"],
        qkv_bias=True,
        tie_weights=True,
        attention=Component("causal"),
        norm=Component("layernorm", {"eps": 1e-5}),
        feedforward=Component("gelu-mlp", {"expansion": 4}),
    )


def read_hparams(folder: Path) -> dict[str, int]:
    data = read_gpt2_json(folder / "hparams.json", HPARAMS)
    return {key: data[key] for key in HPARAMS}


# --- reading the checkpoint -------------------------------------------------------------------


def pick_reader(reader: str) -> str:
    if reader == "auto":
        return "tensorflow" if importlib.util.find_spec("tensorflow") is not None else "python"
    if reader == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        raise GptkitError("reader = 'tensorflow' but TensorFlow is not installed (pip install gptkit[tf]); 'python' needs no TensorFlow")
    return reader


class CheckpointReader:
    """The variables of a TF checkpoint at `prefix`, read by TensorFlow or by gptkit's own reader."""

    def __init__(self, prefix: Path, reader: str):
        self.prefix = prefix
        self.kind = pick_reader(reader)
        if self.kind == "tensorflow":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf

            self._errors = (tf.errors.OpError, IndexError, ValueError, RuntimeError)  # pywrap maps codes to these
            self._tf = self._call(tf.train.load_checkpoint, str(prefix))
        else:
            self._bundle = tf_bundle
            self._errors = (tf_bundle.TFBundleError,)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._errors as exc:
            message = (getattr(exc, "message", None) or str(exc)).strip().splitlines()[0]
            if self.kind == "python":  # gptkit's reader names the file and tensor itself
                raise GptkitError(message) from None
            raise GptkitError(f"{self.prefix}: unreadable TensorFlow checkpoint ({message})") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.kind == "tensorflow":
            return {k: tuple(v) for k, v in self._call(self._tf.get_variable_to_shape_map).items()}
        return {k: tuple(shape) for k, (_, shape) in self._call(self._bundle.list_variables, self.prefix).items()}

    def read(self, name: str) -> np.ndarray:
        if self.kind == "tensorflow":
            return np.asarray(self._call(self._tf.get_tensor, name))
        return self._call(self._bundle.read_variables, self.prefix, [name])[name]


def check_folder(folder: Path, reader: str, read: bool) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """hparams and (when `read`) every variable, each checked against the shape hparams implies."""
    for name in NEEDED:
        if not (folder / name).is_file():
            raise GptkitError(f"{folder / name}: missing (an OpenAI GPT-2 folder holds {', '.join(FILES)})")
    hparams = read_hparams(folder)
    checkpoint = CheckpointReader(folder / PREFIX, reader)
    expected = expected_shapes(hparams)
    check_tensors(checkpoint.shapes(), expected, str(folder / INDEX), "hparams.json")
    variables = {}
    for name, shape in expected.items():
        array = checkpoint.read(name)
        if array.shape != shape or array.dtype != np.float32:
            raise GptkitError(f"{folder / DATA}: tensor {name} reads as {array.dtype} {list(array.shape)}, expected float32 {list(shape)}")
        if read:
            variables[name] = array
    return hparams, variables


def load_folder(folder: Path, reader: str = "auto", ctx: Context | None = None) -> LoadedModel:
    hparams, variables = check_folder(folder, reader, read=True)
    state = to_gptkit({k: torch.from_numpy(v) for k, v in variables.items()}, hparams["n_layer"])
    tokenizer = registry.tokenizer.build(Component("gpt2", {"path": str(folder)}), ctx or Context())
    return LoadedModel(config_from_hparams(hparams), state, tokenizer)


# --- download -----------------------------------------------------------------------------------


def file_sizes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_size for name in FILES if (folder / name).is_file()}


def is_complete(folder: Path) -> bool:
    """Downloaded and verified, and no file changed size since."""
    try:
        recorded = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == file_sizes(folder) and len(recorded) == len(FILES)


@attrs.define
class OpenAIParams:
    model: str = path_field("gpt2-124M", source=True)  # a preset (gpt2-124M ... gpt2-1558M), an alias (gpt2-medium) or a folder
    dir: str | None = path_field()  # download folder (a subfolder per size); default ~/.cache/gptkit/openai-gpt2
    base_url: str | None = None  # default $GPTKIT_OPENAI_BASE_URL, else OpenAI's bucket, then the book's backup
    reader: Literal["auto", "tensorflow", "python"] = "auto"  # auto: TensorFlow when installed


class OpenAILoader:
    def __init__(self, ctx: Context, model: str, dir: str | None, base_url: str | None, reader: str):
        self.ctx = ctx
        self.model = model
        self.root = Path(dir).expanduser() if dir else cache_dir() / "openai-gpt2"
        env = os.environ.get("GPTKIT_OPENAI_BASE_URL")
        self.base_urls = (base_url,) if base_url else (env,) if env else BASE_URLS
        self.reader = reader

    def can_load(self, source: str) -> bool:
        path = Path(source)
        if path.is_dir():
            return (path / "hparams.json").is_file() or (path / INDEX).is_file()
        return openai_size(source) is not None

    def load(self, source: str | None = None) -> LoadedModel:
        source = source or self.model
        folder = Path(source)
        if not folder.is_dir():
            folder = self.download(source)
        return load_folder(folder, self.reader, self.ctx)

    def download(self, name: str) -> Path:
        """The verified folder of size `name`, downloaded (or resumed) first when not complete."""
        size = openai_size(name)
        if size is None:
            raise GptkitError(f"{name!r} is not an OpenAI GPT-2 size; sizes: {', '.join(SIZES)} (or 124M ..., gpt2-medium ...)")
        folder = self.root / size
        if is_complete(folder):
            return folder
        (folder / COMPLETE).unlink(missing_ok=True)
        try:
            for file in FILES:
                if not (folder / file).is_file():
                    fetch([f"{base.rstrip('/')}/{size}/{file}" for base in self.base_urls], folder / file)
        except DownloadError as exc:
            raise DownloadError(f"{exc}; {offline_hint(f'gptkit download gpt2-{size}', folder)}") from None
        try:
            check_folder(folder, self.reader, read=False)
        except GptkitError as exc:
            for file in ("hparams.json", INDEX, DATA):  # refetched next time
                (folder / file).unlink(missing_ok=True)
            raise GptkitError(f"{exc} (the downloaded checkpoint files were removed; run again to download them anew)") from None
        atomic_write_text(folder / COMPLETE, json.dumps({"files": file_sizes(folder)}, indent=1) + "\n")
        return folder


@hookimpl
def register_components(registry):
    doc = "OpenAI's GPT-2 TensorFlow checkpoints (124M-1558M): download, verify, map into gptkit."
    registry.checkpoint.register("openai-tf", OpenAILoader, params=OpenAIParams, doc=doc)
