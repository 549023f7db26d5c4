"""`hf`: GPT-2 in Hugging Face's layout (a folder or a hub id), read and written.

HF's GPT-2 stores its linear layers as Conv1D, weights [in, out]: they are transposed into gptkit's
nn.Linear [out, in]. The `attn.bias` / `attn.masked_bias` buffers (causal masks) are ignored. The
weights are model.safetensors or shards listed by model.safetensors.index.json. The tokenizer is
vocab.json + merges.txt (the same files as OpenAI's encoder.json + vocab.bpe) or tokenizer.json
alone, as transformers 5 saves it.

`save` writes a folder that transformers' AutoTokenizer, AutoModelForCausalLM and pipeline open
without a warning (`gptkit export`): config.json, model.safetensors, the tokenizer as vocab.json +
merges.txt and tokenizer.json, and what gptkit_plugins.hf_meta writes: tokenizer_config.json (with
the chat template), generation_config.json and a model card.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from gptkit import hookimpl
from gptkit.files import atomic_dir
from gptkit.download import DownloadError, offline_hint
from gptkit.json_errors import malformed_json
from gptkit.schema import Component, path_field
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel
from gptkit.model import GPT, GPTConfig
from gptkit.presets import resolve_preset
from gptkit.plugins import registry
from gptkit.weights import check_tensors
from gptkit.gpt2_files import ENDOFTEXT, data_gym_byte_decoder, gpt2_name_map, read_gpt2_json, read_vocab_files
from gptkit_plugins.hf_meta import HUB_ID, HUB_IDS, generation_config, model_card, prompt_of_chat_template, read_chat_template, run_record, tokenizer_config

WEIGHTS, SHARD_INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"
HUB_FILES = [CONFIG, WEIGHTS, SHARD_INDEX, "model-*.safetensors", *TOKENIZER_FILES, TOKENIZER_JSON]
IGNORED = re.compile(r"(^|\.)attn\.(masked_)?bias$")  # causal-mask buffers, not weights
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def name_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """(HF name, gptkit name, is a Conv1D weight stored [in, out]) for every GPT-2 tensor."""
    return gpt2_name_map(n_layer, lambda block, module, param: f"{'' if block is None else f'h.{block}.'}{module}.{param}")


def gptkit_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """gptkit's parameter shapes for `config` (from a model on the meta device: no memory used)."""
    with torch.device("meta"):
        model = GPT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def hf_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The HF name and shape of every tensor a GPT-2 of `config` stores."""
    shapes = gptkit_shapes(config)
    out = {hf: shapes[pt][::-1] if conv else shapes[pt] for hf, pt, conv in name_map(config.n_layers)}
    if not config.tie_weights:
        out["lm_head.weight"] = shapes["head.weight"]
    return out


def to_gptkit(tensors: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    state = {pt: tensors[hf].t().contiguous() if conv else tensors[hf] for hf, pt, conv in name_map(config.n_layers)}
    state["head.weight"] = state["tok_emb.weight"] if config.tie_weights else tensors["lm_head.weight"]
    return state


def to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """gptkit's state -> GPT2LMHeadModel's names (prefixed `transformer.`); a missing qkv bias is zero."""
    out = {}
    for hf, pt, conv in name_map(config.n_layers):
        if pt.endswith("attn.qkv.bias") and not config.qkv_bias:
            tensor = torch.zeros(3 * config.emb_dim, dtype=state["tok_emb.weight"].dtype)
        else:
            tensor = state[pt].t() if conv else state[pt]
        out["transformer." + hf] = tensor.detach().contiguous()
    if not config.tie_weights:
        out["lm_head.weight"] = state["head.weight"].detach().contiguous()
    return out


# --- config.json ----------------------------------------------------------------------------------


def config_from_hf(path: Path) -> GPTConfig:
    """gptkit's model config from an HF GPT-2 config.json; settings gptkit's GPT cannot match are errors."""
    sizes_in_file = {"vocab_size": "vocab_size", "context_length": "n_positions", "emb_dim": "n_embd", "n_heads": "n_head", "n_layers": "n_layer"}
    missing = f"missing (a Hugging Face GPT-2 folder holds config.json, {WEIGHTS}, vocab.json + merges.txt or tokenizer.json)"
    data = read_gpt2_json(path, sizes_in_file.values(), missing)
    if data.get("model_type", "gpt2") != "gpt2":
        raise GptkitError(f"{path}: model_type {data.get('model_type')!r} is not GPT-2")
    sizes = {key: data[file_key] for key, file_key in sizes_in_file.items()}
    activation = data.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise GptkitError(f"{path}: activation_function {activation!r} is not supported (gptkit's gelu-mlp is the tanh GELU, {TANH_GELU[0]!r})")
    inner = data.get("n_inner") or 4 * sizes["emb_dim"]
    if inner % sizes["emb_dim"]:
        raise GptkitError(f"{path}: n_inner = {inner} is not a multiple of n_embd = {sizes['emb_dim']}")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention", "reorder_and_upcast_attn"):
        if data.get(flag):
            raise GptkitError(f"{path}: {flag} = true is not supported")
    if data.get("scale_attn_weights") is False:
        raise GptkitError(f"{path}: scale_attn_weights = false is not supported (gptkit's attention divides by sqrt(head size))")
    return GPTConfig(
        **sizes,
        qkv_bias=True,
        tie_weights=bool(data.get("tie_word_embeddings", True)),
        norm=Component("layernorm", {"eps": float(data.get("layer_norm_epsilon", 1e-5))}),
        feedforward=Component("gelu-mlp", {"expansion": inner // sizes["emb_dim"]}),
    )


def config_to_hf(config: GPTConfig, eos_id: int | None) -> dict:
    """config.json for GPT2LMHeadModel; a model whose parts HF's GPT-2 lacks is an error."""
    if config.norm.name != "layernorm":
        raise GptkitError(f"model.norm = {config.norm.name!r}: Hugging Face's GPT-2 has only LayerNorm")
    if config.feedforward.name != "gelu-mlp":
        raise GptkitError(f"model.feedforward = {config.feedforward.name!r}: Hugging Face's GPT-2 has only the GELU MLP")
    if config.attention.name not in ("causal", "causal-reference"):
        raise GptkitError(f"model.attention = {config.attention.name!r}: Hugging Face's GPT-2 has only plain causal attention")
    pdrop = config.drop_rate
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.emb_dim,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "n_inner": config.feedforward.params.get("expansion", 4) * config.emb_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm.params.get("eps", 1e-5),
        "resid_pdrop": pdrop,
        "embd_pdrop": pdrop,
        "attn_pdrop": pdrop,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "dtype": "float32",
    }


# --- tokenizer files ----------------------------------------------------------------------------


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each token of rank >= 256: BPE over its bytes with only lower ranks
    leaves exactly two parts, and they are the merge."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], rank))
            if ranks.get(parts[best] + parts[best + 1], rank) >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise GptkitError(f"the vocabulary's token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_vocabulary(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]] | None:
    """(vocabulary, merges) in GPT-2's byte spelling for a byte-level BPE tokenizer: read from its
    source folder when it has GPT-2's files, else recovered from its ranks. The `bytes` tokenizer is
    one without merges (byte b is id b, end-of-text 256). None for any other tokenizer."""
    char_of = {b: c for c, b in data_gym_byte_decoder().items()}
    if getattr(tokenizer, "name", None) == "bytes":  # the built-in byte tokenizer, by its registered name
        return {**{char_of[b]: b for b in range(256)}, ENDOFTEXT: tokenizer.eos_id}, []
    source = getattr(tokenizer, "source", None)
    if source is not None and Path(source).is_dir():
        for names in (("encoder.json", "vocab.bpe"), TOKENIZER_FILES):
            if all((Path(source) / n).is_file() for n in names):
                return read_vocab_files(*(Path(source) / n for n in names))
    encoding = getattr(tokenizer, "encoding", None)
    if encoding is None or not hasattr(encoding, "_mergeable_ranks"):
        return None

    def text(token: bytes) -> str:
        return "".join(char_of[b] for b in token)

    ranks = encoding._mergeable_ranks
    vocab = {**{text(token): rank for token, rank in ranks.items()}, **encoding._special_tokens}
    return vocab, [(text(a), text(b)) for a, b in merges_from_ranks(ranks)]


def tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    """Hugging Face `tokenizers`' file for GPT-2's byte-level BPE, as transformers saves GPT-2's:
    what transformers 5 reads without vocab.json and merges.txt, and fast tokenizers everywhere."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = [{"id": vocab[ENDOFTEXT], "content": ENDOFTEXT, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special if ENDOFTEXT in vocab else [],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def write_vocab_files(tokenizer, directory: Path) -> bool:
    """vocab.json, merges.txt and tokenizer.json for a byte-level BPE tokenizer (see
    `gpt2_vocabulary`); False, writing nothing, for a tokenizer that is not one."""
    found = gpt2_vocabulary(tokenizer)
    if found is None:
        return False
    vocab, merges = found
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2"] + [f"{a} {b}" for a, b in merges]) + "\n", encoding="utf-8")
    (directory / TOKENIZER_JSON).write_text(json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False), encoding="utf-8")
    return True


# --- reading and writing folders ----------------------------------------------------------------


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors (or of the shards a model.safetensors.index.json lists)."""
    if (folder / SHARD_INDEX).is_file() and not (folder / WEIGHTS).is_file():
        try:
            shards = sorted(set(json.loads((folder / SHARD_INDEX).read_text(encoding="utf-8"))["weight_map"].values()))
        except json.JSONDecodeError as exc:
            raise GptkitError(malformed_json(folder / SHARD_INDEX, exc)) from None
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise GptkitError(f"{folder / SHARD_INDEX}: not a valid shard index ({exc})") from None
    else:
        shards = [WEIGHTS]
    tensors = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise GptkitError(f"{path}: missing (listed in {SHARD_INDEX})" if shard != WEIGHTS else f"{path}: missing (a Hugging Face GPT-2 folder holds {CONFIG} and {WEIGHTS} or {SHARD_INDEX})")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise GptkitError(f"{path}: unreadable or corrupt safetensors file ({exc})") from None
    return tensors


def load_folder(folder: Path, ctx: Context | None = None) -> LoadedModel:
    config = config_from_hf(folder / CONFIG)
    missing = [n for n in TOKENIZER_FILES if not (folder / n).is_file()]
    if missing and not (folder / TOKENIZER_JSON).is_file():
        raise GptkitError(f"{folder / missing[0]}: missing (the GPT-2 tokenizer is read from vocab.json + merges.txt, or {TOKENIZER_JSON})")
    raw = read_weights(folder)
    tensors = {k.removeprefix("transformer."): v for k, v in raw.items() if not IGNORED.search(k)}
    if config.tie_weights:
        tensors.pop("lm_head.weight", None)  # some writers store the tied copy too
    weights = folder / (WEIGHTS if (folder / WEIGHTS).is_file() else SHARD_INDEX)
    check_tensors({k: tuple(v.shape) for k, v in tensors.items()}, hf_shapes(config), str(weights), "config.json")
    state = {k: v.float() if v.is_floating_point() else v for k, v in to_gptkit(tensors, config).items()}
    tokenizer = registry.tokenizer.build(Component("gpt2", {"path": str(folder)}), ctx or Context())
    prompt = prompt_of_chat_template(read_chat_template(folder))
    return LoadedModel(config, state, tokenizer, Component(prompt) if prompt else None, str(folder))


def save_folder(loaded: LoadedModel, directory: Path) -> Path:
    """An HF GPT-2 folder, written atomically: config.json, model.safetensors, generation_config.json,
    a model card, and for a byte-level BPE tokenizer (GPT-2's, or bytes) its files with
    tokenizer_config.json. A model from a gptkit run gets the run's prompt format as chat
    template, its default sampler and its records in the card (see gptkit_plugins.hf_meta)."""
    final = Path(directory)
    config = loaded.model_config
    eos_id = getattr(loaded.tokenizer, "eos_id", None)
    eos_id = eos_id if eos_id is not None and eos_id < config.vocab_size else None
    hf_config = config_to_hf(config, eos_id)
    weights = to_hf(loaded.state_dict, config)
    run = run_record(loaded.origin)
    fmt = registry.prompt.build(loaded.prompt, Context(tokenizer=loaded.tokenizer)) if loaded.prompt is not None else None
    with atomic_dir(final) as tmp:
        save_file({k: v.cpu() for k, v in weights.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / CONFIG, hf_config)
        write_json(tmp / "generation_config.json", generation_config(eos_id, run))
        chat = False
        if loaded.tokenizer is not None and write_vocab_files(loaded.tokenizer, tmp):
            tokenizer = tokenizer_config(config.context_length, fmt)
            write_json(tmp / "tokenizer_config.json", tokenizer)
            chat = "chat_template" in tokenizer
        elif loaded.tokenizer is not None:
            name = getattr(loaded.tokenizer, "name", "?")
            print(f"note: tokenizer {name!r} has no Hugging Face GPT-2 form; wrote no tokenizer files", file=sys.stderr)
        if fmt is not None and not chat:
            print(f"note: prompt format {loaded.prompt.name!r} has no chat template form; wrote none", file=sys.stderr)
        n_parameters = sum(t.numel() for t in weights.values())
        (tmp / "README.md").write_text(model_card(config, n_parameters, run, loaded.origin, chat), encoding="utf-8")
    return final


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@attrs.define
class HFParams:
    model: str = path_field("openai-community/gpt2", source=True)  # a hub id or a local folder
    dir: str | None = path_field()  # download folder (a subfolder per model); default Hugging Face's cache


class HFLoader:
    def __init__(self, ctx: Context, model: str, dir: str | None):
        self.ctx = ctx
        self.model = model
        self.dir = Path(dir).expanduser() if dir else None

    def can_load(self, source: str) -> bool:
        path = Path(source)
        if path.is_dir():
            if not (path / CONFIG).is_file():
                return (path / WEIGHTS).is_file() or (path / SHARD_INDEX).is_file()
            try:
                return json.loads((path / CONFIG).read_text(encoding="utf-8")).get("model_type") == "gpt2"
            except (OSError, ValueError, AttributeError):
                return False
        return not path.exists() and bool(HUB_ID.match(source))

    def load(self, source: str | None = None) -> LoadedModel:
        source = source or self.model
        folder = Path(source) if Path(source).is_dir() else self.download(source)
        return attrs.evolve(load_folder(folder, self.ctx), origin=source)

    def download(self, name: str) -> Path:
        """The local folder of hub model `name` (a hub id or a preset such as gpt2-medium)."""
        repo = HUB_IDS.get(resolve_preset(name) or "", name)
        if not HUB_ID.match(repo):
            raise GptkitError(f"{name!r} is not a Hugging Face hub id (owner/name) or a preset ({', '.join(HUB_IDS)})")
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise GptkitError("loading from the Hugging Face hub needs huggingface_hub (pip install huggingface_hub)") from None
        local_dir = self.dir / repo.split("/")[-1] if self.dir else None
        try:
            return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_dir=local_dir))
        except Exception as exc:  # network, 404, auth: huggingface_hub has many error types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DownloadError(f"{repo}: could not download from the Hugging Face hub ({type(exc).__name__}: {message}); "
                                + offline_hint(f"gptkit download {repo} --source hf")) from None

    def save(self, loaded: LoadedModel, directory: str | Path) -> Path:
        return save_folder(loaded, Path(directory))


@hookimpl
def register_components(registry):
    doc = "Hugging Face GPT-2 (a folder with model.safetensors + config.json, or a hub id); also writes it."
    registry.checkpoint.register("hf", HFLoader, params=HFParams, doc=doc)
