"""Finetune strategies: what trains under full and freeze, and what a freeze run changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gptkit
from gptkit import checkpoint
from gptkit.config import Component, structure
from gptkit.errors import ConfigError, GptkitError
from gptkit.interfaces import Context
from gptkit.model import GPT
from gptkit.plugins import registry
from gptkit.runs import model_config_from
from test_training import tiny_config
from tinymodel import byte_tokenizer, tiny_gpt


def strategy(name: str, **params):
    return registry.finetune.build(Component(name, params), Context())


def trainable(model) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


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


# --- runs -----------------------------------------------------------------------------------------


def base_model_folder(tmp_path: Path) -> Path:
    """A random GPT of the tiny run's sizes, saved as a gptkit model folder: the base `[init]` loads."""
    folder = tmp_path / "base"
    if not folder.exists():
        torch.manual_seed(1)
        checkpoint.save_model(folder, GPT(model_config_from(tiny_config(tmp_path).model)), byte_tokenizer())
    return folder


def run_config(tmp_path: Path, finetune: str, *overrides: str):
    """The tiny pretraining run of test_training, starting from the saved base, with `train.finetune = finetune`."""
    base = base_model_folder(tmp_path)
    return tiny_config(tmp_path, f"init.checkpoint={{name = 'gptkit', path = '{base}'}}", f"train.finetune={finetune}", "train.lr=1e-2", *overrides)


def test_freeze_run_changes_only_the_top_block_and_final_norm(tmp_path):
    gptkit.run(run_config(tmp_path, "{name = 'freeze', trainable_blocks = 1}", "train.max_steps=3"))
    base = load_file(tmp_path / "base" / checkpoint.WEIGHTS)
    trained = load_file(checkpoint.step_dir(tmp_path / "run", 3) / checkpoint.WEIGHTS)
    assert set(trained) == set(base)
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed == {n for n in base if n.startswith(("blocks.1.", "final_norm."))}

