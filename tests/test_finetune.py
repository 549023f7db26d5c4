"""Finetune strategies: what trains under full / freeze / lora, LoRA's merged checkpoints (loadable,
generating, exportable to transformers), exact resume of a LoRA run, and adapter files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gptkit
from gpt2_fixtures import hf_logits
from gptkit import checkpoint
from gptkit.adapters import LEGACY, PEFT_CONFIG, PEFT_WEIGHTS, apply_adapter
from gptkit.cli import cli
from gptkit.config import Component, structure
from gptkit.errors import ConfigError, GptkitError
from gptkit.interfaces import Context
from gptkit.model import GPT
from gptkit.plugins import registry
from gptkit.weights import model_with_weights
from test_training import losses, tiny_config
from tinymodel import byte_tokenizer, tiny_gpt

IDS = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))


def strategy(name: str, **params):
    return registry.finetune.build(Component(name, params), Context())


def trainable(model) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def lora_update_size(emb: int, rank: int) -> int:
    """rank * (in + out) over one block's qkv (emb -> 3 emb), attn proj (emb -> emb), fc (emb -> 4 emb), ff proj (4 emb -> emb)."""
    return rank * ((emb + 3 * emb) + (emb + emb) + (emb + 4 * emb) + (4 * emb + emb))


# --- what trains ----------------------------------------------------------------------------------


def test_full_trains_every_parameter():
    model = tiny_gpt()
    model.requires_grad_(False)
    strategy("full").prepare(model)
    assert sum(trainable(model).values()) == model.num_parameters()


@pytest.mark.parametrize("tie", [True, False])
def test_freeze_trains_the_top_blocks_the_final_norm_and_an_untied_head(tie):
    model = tiny_gpt(n_layers=3, tie_weights=tie)
    strategy("freeze", trainable_blocks=2).prepare(model)
    names = set(trainable(model))
    expected = {n for n, _ in model.named_parameters() if n.startswith(("blocks.1.", "blocks.2.", "final_norm."))}
    assert names == expected | ({"head.weight"} if not tie else set())
    assert not model.tok_emb.weight.requires_grad and not model.pos_emb.weight.requires_grad  # a tied head stays frozen with them
    strategy("freeze", trainable_blocks=0).prepare(model)
    assert set(trainable(model)) == {"final_norm.weight", "final_norm.bias"} | ({"head.weight"} if not tie else set())


def test_freeze_more_blocks_than_the_model_has():
    with pytest.raises(GptkitError, match=r"^train.finetune.trainable_blocks = 3, but the model has only 2 layers \(n_layers\)$"):
        strategy("freeze", trainable_blocks=3).prepare(tiny_gpt())
    with pytest.raises(ConfigError, match=r"train.finetune.trainable_blocks: 'trainable_blocks' must be >= 0"):
        structure({"run": {"name": "x", "recipe": "pretrain"}, "train": {"finetune": {"name": "freeze", "trainable_blocks": -1}}})


def test_lora_trains_only_the_adapters_rank_times_in_plus_out():
    model = tiny_gpt()  # emb 32, 2 blocks
    strategy("lora", rank=4).prepare(model)
    counts = trainable(model)
    assert all(name.endswith((".lora_a", ".lora_b")) for name in counts) and len(counts) == 2 * 4 * 2
    assert sum(counts.values()) == 2 * lora_update_size(32, 4) == 4096
    subset = tiny_gpt()
    strategy("lora", rank=2, targets=["blocks.1.ff.*"]).prepare(subset)
    assert trainable(subset) == {"blocks.1.ff.fc.lora_a": 2 * 32, "blocks.1.ff.fc.lora_b": 128 * 2, "blocks.1.ff.proj.lora_a": 2 * 128, "blocks.1.ff.proj.lora_b": 32 * 2}


def test_lora_patterns_that_match_nothing_or_the_tied_head():
    with pytest.raises(GptkitError) as error:
        strategy("lora", targets=["*.attn.qkv", "*.attn.q", "*.mlp.*"]).prepare(tiny_gpt())
    assert str(error.value) == (
        "train.finetune.targets: '*.attn.q', '*.mlp.*' match no nn.Linear of the model; its nn.Linear modules are "
        "blocks.*.attn.qkv, blocks.*.attn.proj, blocks.*.ff.fc, blocks.*.ff.proj, head"
    )
    with pytest.raises(GptkitError, match=r"^train.finetune.targets: 'head' is tied to the token embedding"):
        strategy("lora", targets=["head"]).prepare(tiny_gpt())
    untied = tiny_gpt(tie_weights=False)
    strategy("lora", rank=2, targets=["head"]).prepare(untied)
    assert sum(trainable(untied).values()) == 2 * (32 + 257)


def test_lora_starts_as_the_model_and_its_merged_weights_give_the_same_logits():
    model = tiny_gpt()
    with torch.no_grad():
        before = model(IDS)
    lora = strategy("lora", rank=4, alpha=8)
    lora.prepare(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(IDS), before)  # B = 0: unchanged at step 0
        for name, p in model.named_parameters():
            if name.endswith(".lora_b"):
                p.normal_(0.0, 0.05)
        unmerged = model(IDS)
    saved = lora.saved_weights(model)
    assert set(saved) == set(checkpoint.model_state_for_saving(tiny_gpt()))  # canonical names, no tied head
    merged = model_with_weights(model.config, {**saved, "head.weight": saved["tok_emb.weight"]}, "merged").eval()
    with torch.no_grad():
        assert not torch.allclose(merged(IDS), before, atol=1e-3)
        torch.testing.assert_close(merged(IDS), unmerged, atol=1e-5, rtol=0)
    assert all(p.requires_grad == name.endswith(("lora_a", "lora_b")) for name, p in model.named_parameters())  # the model stays unmerged


# --- runs -----------------------------------------------------------------------------------------


def base_model_folder(tmp_path: Path) -> Path:
    """A random GPT of the tiny run's sizes, saved as a gptkit model folder: the base `[init]` loads."""
    folder = tmp_path / "base"
    if not folder.exists():
        torch.manual_seed(1)
        checkpoint.save_model(folder, GPT(tiny_config(tmp_path).model), byte_tokenizer())
    return folder


def run_config(tmp_path: Path, finetune: str, *overrides: str):
    """The tiny pretraining run of test_training, starting from the saved base, with `train.finetune = finetune`."""
    base = base_model_folder(tmp_path)
    return tiny_config(tmp_path, f"init.checkpoint={{name = 'gptkit', path = '{base}'}}", f"train.finetune={finetune}", "train.lr=1e-2", *overrides)


LORA = "{name = 'lora', rank = 4, alpha = 8, save_adapter = true}"


def test_freeze_run_changes_only_the_top_block_and_final_norm(tmp_path):
    gptkit.run(run_config(tmp_path, "{name = 'freeze', trainable_blocks = 1}", "train.max_steps=3"))
    base = load_file(tmp_path / "base" / checkpoint.WEIGHTS)
    trained = load_file(checkpoint.step_dir(tmp_path / "run", 3) / checkpoint.WEIGHTS)
    assert set(trained) == set(base)
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed == {n for n in base if n.startswith(("blocks.1.", "final_norm."))}


@pytest.mark.slow
def test_lora_checkpoint_loads_generates_and_exports_to_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=3"))
    ckpt = checkpoint.step_dir(tmp_path / "run", 3)
    base = load_file(tmp_path / "base" / checkpoint.WEIGHTS)
    merged = load_file(ckpt / checkpoint.WEIGHTS)
    assert set(merged) == set(base)
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed == {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "ff.fc", "ff.proj")}

    model, tokenizer = gptkit.load_model(ckpt)
    assert tokenizer.name == "bytes"
    out = subprocess.run(
        [sys.executable, "-m", "gptkit", "generate", str(tmp_path / "run"), "--prompt", "Every", "--max-new-tokens", "3", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out)["new_tokens"] == 3

    result = CliRunner().invoke(cli, ["export", str(ckpt), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(exported, IDS), model(IDS), atol=1e-4, rtol=0)


def test_lora_resume_equals_an_uninterrupted_run(tmp_path):
    """Stopped at step 5 by max_steps and resumed to 9, with model and LoRA dropout: the same losses to the bit."""
    full, part = tmp_path / "full", tmp_path / "part"
    gptkit.run(run_config(tmp_path, LORA, f"run.out_dir={full}", "train.max_steps=9"))
    gptkit.run(run_config(tmp_path, LORA, f"run.out_dir={part}", "train.max_steps=5"))
    state = checkpoint.load_training_state(checkpoint.step_dir(part, 5))
    assert sorted(state["finetune"]) == sorted(f"blocks.{i}.{m}.lora_{ab}" for i in range(2) for m in ("attn.qkv", "attn.proj", "ff.fc", "ff.proj") for ab in "ab")
    gptkit.run(run_config(tmp_path, LORA, f"run.out_dir={part}", "train.max_steps=9", "run.resume=auto"))
    assert len(losses(full)) == 9 and losses(part) == losses(full)
    assert load_file(checkpoint.step_dir(part, 9) / checkpoint.WEIGHTS).keys() == load_file(checkpoint.step_dir(full, 9) / checkpoint.WEIGHTS).keys()
    for name, tensor in load_file(checkpoint.step_dir(part, 9) / checkpoint.WEIGHTS).items():
        assert torch.equal(tensor, load_file(checkpoint.step_dir(full, 9) / checkpoint.WEIGHTS)[name]), name


def test_lora_resume_with_other_settings_is_an_error(tmp_path):
    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=2"))
    with pytest.raises(GptkitError, match=r"run.resume: .*step-000002 was trained with other settings; these would change the run's course:\n(.*\n)*  train.finetune.rank: 4 -> 8\n"):
        gptkit.run(run_config(tmp_path, "{name = 'lora', rank = 8}", "train.max_steps=4", "run.resume=auto"))
    allow = "run.resume_changes=allow"  # past the settings check, the strategy's own checks still hold
    with pytest.raises(GptkitError, match=r"run.resume: the checkpoint's LoRA adapter does not fit train.finetune: wrong shapes: blocks.0.attn.qkv.lora_a \[4, 16\] \(train.finetune implies \[8, 16\]\)"):
        gptkit.run(run_config(tmp_path, "{name = 'lora', rank = 8}", "train.max_steps=4", "run.resume=auto", allow))
    with pytest.raises(GptkitError, match=r"run.resume: the checkpoint holds the tensors of an adapter"):
        gptkit.run(run_config(tmp_path, "{name = 'full'}", "train.max_steps=4", "run.resume=auto", allow))


# --- adapter files --------------------------------------------------------------------------------


def test_adapter_file_is_small_and_merges_into_the_base_as_the_checkpoint(tmp_path):
    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=3"))
    ckpt = checkpoint.step_dir(tmp_path / "run", 3)
    adapter = ckpt / PEFT_WEIGHTS
    with safe_open(str(adapter), framework="pt") as f:
        meta, names = f.metadata(), sorted(f.keys())
    config = json.loads((ckpt / PEFT_CONFIG).read_text())
    assert meta == {"format": "pt"} and (config["peft_type"], config["r"], config["lora_alpha"], config["lora_dropout"]) == ("LORA", 4, 8, 0.05)
    assert config["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] and config["fan_in_fan_out"] is True
    assert (config["bias"], config["use_rslora"], config["use_dora"]) == ("none", False, False)
    assert names == sorted(f"base_model.model.transformer.h.{i}.{m}.lora_{ab}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") for ab in "AB")
    assert adapter.stat().st_size < (ckpt / checkpoint.WEIGHTS).stat().st_size / 3

    model, _ = gptkit.load_model(tmp_path / "base")
    apply_adapter(model, ckpt)
    expected = load_file(ckpt / checkpoint.WEIGHTS)
    got = checkpoint.model_state_for_saving(model)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name  # the same merge, on the same numbers


def test_init_adapter_merges_the_adapter_into_the_init_checkpoint(tmp_path):
    from gptkit.runs import setup_run

    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=3"))
    ckpt = checkpoint.step_dir(tmp_path / "run", 3)
    expected = load_file(ckpt / checkpoint.WEIGHTS)
    for adapter in (ckpt, ckpt / PEFT_WEIGHTS):  # the folder holding it, or the file
        run = setup_run(run_config(tmp_path, "{name = 'full'}", f"init.adapter={adapter}", f"run.out_dir={tmp_path / 'other'}"))
        got = checkpoint.model_state_for_saving(run.model)
        assert all(torch.equal(got[name], expected[name]) for name in expected)
    with pytest.raises(ConfigError, match="init.adapter: needs init.checkpoint"):
        tiny_config(tmp_path, f"init.adapter={ckpt}")


def test_bad_adapter_files_name_the_file_and_the_tensor(tmp_path):
    model = tiny_gpt()
    good = {"blocks.0.attn.qkv.lora_a": torch.zeros(4, 32), "blocks.0.attn.qkv.lora_b": torch.zeros(96, 4)}
    meta = {"format": "gptkit-lora", "version": "1", "rank": "4", "alpha": "8.0", "targets": "[]"}

    def write(tensors, metadata=meta) -> Path:
        path = tmp_path / "adapter.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        return path

    cases = [
        ({**good, "blocks.0.attn.qkv.lora_b": torch.zeros(96, 2)}, meta, r"tensor blocks.0.attn.qkv.lora_b has shape \[96, 2\]; blocks.0.attn.qkv at rank 4 needs \[96, 4\]"),
        ({"blocks.0.attn.qkv.lora_a": torch.zeros(4, 32)}, meta, r"tensor blocks.0.attn.qkv.lora_a has no partner blocks.0.attn.qkv.lora_b"),
        ({"blocks.0.attn.qkz.lora_a": torch.zeros(4, 32), "blocks.0.attn.qkz.lora_b": torch.zeros(96, 4)}, meta, r"tensor blocks.0.attn.qkz.lora_a: the model has no nn.Linear blocks.0.attn.qkz$"),
        ({**good, "blocks.0.attn.qkv.weight": torch.zeros(96, 32)}, meta, r"tensor blocks.0.attn.qkv.weight: not an adapter tensor"),
        ({"head.lora_a": torch.zeros(4, 32), "head.lora_b": torch.zeros(257, 4)}, meta, r"tensor head.lora_a: the model's head is tied"),
        (good, {"format": "pt"}, r"not a LoRA adapter gptkit reads \(no adapter_config.json beside it, and its metadata format is 'pt'"),
    ]
    for tensors, metadata, message in cases:
        path = write(tensors, metadata)
        with pytest.raises(GptkitError, match=rf"^{tmp_path / 'adapter.safetensors'}: {message}"):
            apply_adapter(model, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GptkitError, match=r"junk.safetensors: unreadable or corrupt"):
        apply_adapter(model, tmp_path / "junk.safetensors")
    with pytest.raises(GptkitError, match=r"missing.safetensors: no such adapter file"):
        apply_adapter(model, tmp_path / "missing.safetensors")
