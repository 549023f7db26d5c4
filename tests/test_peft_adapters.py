"""LoRA adapters in PEFT's format both ways, checked against PEFT itself: a gptkit LoRA run's adapter
on the exported base in PEFT (logits, and PEFT's merge against gptkit's merged checkpoint), an
adapter trained by PEFT through `[init] adapter` (logits), what gptkit cannot apply named in one
line, adapter files of earlier gptkit, and checkpoints/best's own adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import gptkit
from gpt2_fixtures import hf_logits, no_warnings, random_hf_model, write_hf_folder
from gptkit import checkpoint
from gptkit.adapters import PEFT_CONFIG, apply_adapter
from gptkit.cli import cli
from gptkit.errors import GptkitError
from test_finetune import IDS, LORA, base_model_folder, run_config
from test_training import rows

peft = pytest.importorskip("peft")


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def peft_on(base_folder: Path, adapter: Path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    return PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_folder), adapter).eval()


def lora_layers(model) -> list[str]:
    """The layers of a PeftModel that carry a LoRA adapter, as the GPT-2 names of the base."""
    return sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))


# --- gptkit's LoRA -> PEFT ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets, adapted",
    [
        (None, [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]),
        ("['*.attn.proj', 'blocks.1.ff.fc']", ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc"]),
    ],
    ids=["every-layer", "attn-proj-only"],
)
def test_gptkit_lora_adapter_loads_in_peft_onto_the_exported_base(tmp_path, targets, adapted):
    extra = [f"train.finetune.targets={targets}"] if targets else []
    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=3", *extra))
    ckpt = checkpoint.step_dir(tmp_path / "run", 3)
    invoke("export", str(tmp_path / "base"), str(tmp_path / "hf-base"), "--format", "hf")
    invoke("export", str(ckpt), str(tmp_path / "hf-merged"), "--format", "hf")

    from transformers import GPT2LMHeadModel

    with no_warnings(ignore=(FutureWarning,)):  # peft 0.21 calls a transformers 5 API that is deprecated: not about the files
        model = peft_on(tmp_path / "hf-base", ckpt)
    assert lora_layers(model) == adapted  # exactly gptkit's layers: mlp.c_proj stays out when only attn.proj is targeted
    merged, _ = gptkit.load_model(ckpt)
    peft_logits = hf_logits(model, IDS)
    with torch.no_grad():
        torch.testing.assert_close(peft_logits, merged(IDS), atol=1e-5, rtol=0)
    assert not torch.allclose(peft_logits, hf_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "hf-base").eval(), IDS), atol=1e-4)

    theirs = model.merge_and_unload().state_dict()
    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "hf-merged").state_dict()
    assert theirs.keys() == ours.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], atol=1e-5, rtol=0, msg=name)


def test_best_checkpoint_gets_the_adapter_of_its_own_evaluation(tmp_path):
    """checkpoints/best holds the adapter of the evaluation that made it best, not the one of the
    checkpoint that wrote it (here step 9 is best, written with step 10's checkpoint)."""
    gptkit.run(run_config(tmp_path, LORA, "train.max_steps=10", "train.lr=0.3", "train.eval_every=2", "train.save_best=true"))
    evals = [(r["val_loss"], r["step"]) for r in rows(tmp_path / "run") if "val_loss" in r]
    assert min(evals)[1] < evals[-1][1]
    best = tmp_path / "run" / checkpoint.CHECKPOINTS / checkpoint.BEST
    assert (best / PEFT_CONFIG).is_file()
    model, _ = gptkit.load_model(tmp_path / "base")
    apply_adapter(model, best)
    got, expected = checkpoint.model_state_for_saving(model), load_file(best / checkpoint.WEIGHTS)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    last = load_file(checkpoint.step_dir(tmp_path / "run", 10) / checkpoint.WEIGHTS)
    assert not torch.equal(expected["blocks.0.attn.qkv.weight"], last["blocks.0.attn.qkv.weight"])


# --- PEFT's LoRA -> gptkit ------------------------------------------------------------------------


def adapted_experiment(folder: Path, base: Path, adapter: str) -> Path:
    """A generate run whose model is the HF folder `base` with `adapter` (relative to the file) merged in."""
    experiment = folder / "adapted.toml"
    experiment.write_text(
        '[run]\nname = "adapted"\nrecipe = "generate"\ndevice = "cpu"\n'
        f'[init]\ncheckpoint = {{ name = "hf", model = "{base}" }}\nadapter = "{adapter}"\n'
        '[generate]\nprompt = "Every effort"\nmax_new_tokens = 2\nsampler = { name = "greedy" }\n'
    )
    return experiment


def peft_adapter(folder: Path, base, **config):
    """An adapter trained by PEFT (its B made nonzero, as training would) on the GPT2LMHeadModel `base`, saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    settings = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, lora_dropout=0.1)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **{**settings, **config}))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [{}, {"use_rslora": True, "alpha_pattern": {"mlp.c_fc": 3.0}, "rank_pattern": {"attn.c_proj": 2}}, {"target_modules": ["lm_head", "c_attn"]}],
    ids=["plain", "rslora-patterns", "untied-head"],
)
def test_peft_adapter_runs_through_init_adapter_with_peft_logits(tmp_path, gpt2_vocab, config):
    untied = "lm_head" in config.get("target_modules", [])
    base = random_hf_model(50257, 16, 16, 2, 2, seed=1, tie=not untied)
    write_hf_folder(base, tmp_path / "base", real_vocab=True)
    reference = peft_adapter(tmp_path / "adapter", base, **config)
    invoke("run", str(adapted_experiment(tmp_path, tmp_path / "base", "adapter")), f"run.out_dir={tmp_path / 'run'}")
    model, _ = gptkit.load_model(tmp_path / "run")
    ids = IDS[:, :10]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(reference, ids), atol=1e-5, rtol=0)
        assert not torch.allclose(model(ids), hf_logits(random_hf_model(50257, 16, 16, 2, 2, seed=1, tie=not untied), ids), atol=1e-3)


def test_peft_adapters_gptkit_cannot_apply_are_named_in_one_line(tmp_path):
    cases = {
        "dora": ({"use_dora": True}, r"use_dora = true"),
        "embedding": ({"target_modules": ["wte", "c_attn"]}, r"embedding adapters: transformer\.wte$"),
        "saved-head": ({"modules_to_save": ["lm_head"]}, r"modules_to_save = \['lm_head'\]"),
        "bias": ({"bias": "lora_only"}, r"bias = 'lora_only', lora_bias = False \(trained biases\); tensors that are no LoRA A or B: transformer\.h\.\*\.attn\.c_attn\.base_layer\.bias"),
    }
    model = gptkit.load_model(write_hf_folder(random_hf_model(97, 16, 16, 2, 2, seed=1), tmp_path / "base"))[0]
    for name, (config, message) in cases.items():
        peft_adapter(tmp_path / name, random_hf_model(97, 16, 16, 2, 2, seed=1), **config)
        with pytest.raises(GptkitError, match=rf"^{tmp_path / name / 'adapter_model.safetensors'}: cannot apply this adapter to gptkit's GPT: .*{message}") as error:
            apply_adapter(model, tmp_path / name)
        assert "\n" not in str(error.value)
    # an adapter for another architecture: layers GPT-2 has no name for, and a layer the model lacks
    tensors = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": torch.zeros(4, 16) for i in range(2) for ab in "AB"}
    other = tmp_path / "llama"
    other.mkdir()
    save_file(tensors, str(other / "adapter_model.safetensors"))
    (other / PEFT_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(GptkitError, match=r"targets gptkit has no name for: model\.layers\.\*\.self_attn\.q_proj$"):
        apply_adapter(model, other)
    save_file({"base_model.model.transformer.h.5.attn.c_attn.lora_A.weight": torch.zeros(4, 16), "base_model.model.transformer.h.5.attn.c_attn.lora_B.weight": torch.zeros(48, 4)}, str(other / "adapter_model.safetensors"))
    with pytest.raises(GptkitError, match=r"lora_A\.weight: the model has no nn.Linear blocks\.5\.attn\.qkv$"):
        apply_adapter(model, other)
    result = CliRunner().invoke(cli, ["run", str(adapted_experiment(tmp_path, tmp_path / "base", "dora"))])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "use_dora = true" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_adapter_files_of_earlier_gptkit_still_apply(tmp_path):
    """adapter.safetensors as gptkit wrote it before PEFT's layout: gptkit's names, rank and alpha in its metadata."""
    model = gptkit.load_model(base_model_folder(tmp_path))[0]
    torch.manual_seed(0)
    a, b = torch.randn(4, 16), torch.randn(48, 4)  # the tiny run's width is 16
    meta = {"format": "gptkit-lora", "version": "1", "rank": "4", "alpha": "8.0", "targets": '["*.attn.qkv"]'}
    (tmp_path / "old").mkdir()
    save_file({"blocks.1.attn.qkv.lora_a": a, "blocks.1.attn.qkv.lora_b": b}, str(tmp_path / "old" / "adapter.safetensors"), metadata=meta)
    expected = model.blocks[1].attn.qkv.weight.detach() + 2.0 * b @ a
    for path in (tmp_path / "old", tmp_path / "old" / "adapter.safetensors"):
        adapted = gptkit.load_model(base_model_folder(tmp_path))[0]
        apply_adapter(adapted, path)
        torch.testing.assert_close(adapted.blocks[1].attn.qkv.weight.detach(), expected, atol=1e-6, rtol=0)
        assert torch.equal(adapted.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    with pytest.raises(GptkitError, match=rf"^{tmp_path}: no LoRA adapter here \(expected adapter_config.json \+ adapter_model.safetensors, or adapter.safetensors\)$"):
        apply_adapter(model, tmp_path)
