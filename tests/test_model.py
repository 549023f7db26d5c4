import attrs
import pytest
import torch

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.model import GPT, GPTConfig
from gptkit.presets import PRESETS


def test_canonical_parameter_names(tiny_model_config):
    names = set(GPT(tiny_model_config).state_dict())
    expected = {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "final_norm.bias", "head.weight"}
    for i in range(tiny_model_config.n_layers):
        for part in ("norm1", "norm2", "attn.proj", "ff.fc", "ff.proj"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
        expected.add(f"blocks.{i}.attn.qkv.weight")  # qkv_bias defaults to False
    assert names == expected


def test_weight_tying(tiny_model_config):
    tied = GPT(tiny_model_config)
    assert tied.head.weight is tied.tok_emb.weight
    untied = GPT(attrs.evolve(tiny_model_config, tie_weights=False))
    assert untied.head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize(
    "preset,params",
    # Published GPT-2 sizes (tied head, qkv bias): 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200.
    [("gpt2-124M", 124_439_808), ("gpt2-355M", 354_823_168), ("gpt2-774M", 774_030_080), ("gpt2-1558M", 1_557_611_200)],
)
def test_preset_parameter_counts(preset, params):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(preset, qkv_bias=True))
    assert model.num_parameters() == params


def test_aliases_and_explicit_sizes_override_preset():
    section = GPTConfig(preset="gpt2-medium", context_length=256)
    config = section.resolved()
    assert config.emb_dim == PRESETS["gpt2-355M"]["emb_dim"] and config.context_length == 256


def test_checkpoint_sizes_win_and_disagreement_is_an_error():
    base = GPTConfig.from_preset("gpt2", qkv_bias=True)
    assert GPTConfig().resolved(base=base).qkv_bias is True
    with pytest.raises(GptkitError, match="model.n_layers = 6 but the checkpoint has 12"):
        GPTConfig(n_layers=6).resolved(base=base)


def test_forward_and_context_limit(tiny_model_config):
    model = GPT(tiny_model_config).eval()
    logits = model(torch.randint(0, 97, (2, 32)))
    assert logits.shape == (2, 32, 97)
    with pytest.raises(ValueError, match="exceeds the context length 32"):
        model(torch.randint(0, 97, (1, 33)))


def test_dropout_only_in_training(tiny_model_config):
    model = GPT(attrs.evolve(tiny_model_config, drop_rate=0.5))
    x = torch.randint(0, 97, (2, 8))
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_components_come_from_the_registry(tiny_model_config):
    config = attrs.evolve(tiny_model_config, norm=Component("rmsnorm", {"eps": 1e-6}))
    model = GPT(config)
    assert isinstance(model.final_norm, torch.nn.RMSNorm) and model.final_norm.eps == 1e-6


def test_load_state_names_every_misfit(tiny_model_config):
    from gptkit.weights import load_state

    model = GPT(tiny_model_config)
    state = dict(model.state_dict())
    state.pop("final_norm.bias")
    state["blocks.9.extra"] = torch.zeros(1)
    state["pos_emb.weight"] = torch.zeros(16, 32)
    with pytest.raises(GptkitError) as err:
        load_state(model, state, "ckpt")
    message = str(err.value)
    assert message.startswith("ckpt: weights do not fit the model: missing tensor final_norm.bias")
    assert "unexpected tensor blocks.9.extra" in message
    assert "wrong shape: pos_emb.weight [16, 32] (the model implies [32, 32])" in message


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("init", ["gpt2", "torch-default"])
def test_padded_vocab_leaves_logits_losses_and_saved_model_unchanged(tiny_model_config, tmp_path, tie_weights, init):
    """vocab_multiple pads the embedding and head rows (97 -> 128) for faster matmuls; the same
    seed gives the same model, whose logits, loss, gradients and saved files are the unpadded ones."""
    from gptkit.checkpoint import load_model_files, save_model
    from gptkit.config import Component
    from gptkit.interfaces import Context
    from gptkit.plugins import registry

    config = attrs.evolve(tiny_model_config, tie_weights=tie_weights, init=init)
    models = {}
    for multiple in (1, 64):
        torch.manual_seed(0)
        models[multiple] = GPT(attrs.evolve(config, vocab_multiple=multiple))
    plain, padded = models[1], models[64]
    assert padded.tok_emb.weight.shape[0] == 128 and not padded.head.weight[97:].any()
    assert padded.num_parameters() == plain.num_parameters()
    ids = torch.randint(97, (2, 12))
    losses, grads = [], []
    for model in (plain, padded):
        logits = model(ids)
        assert logits.shape == (2, 12, 97)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(1).flatten())
        loss.backward()
        losses.append((logits, loss))
        grads.append({n: p.grad[:97] if n.endswith(("tok_emb.weight", "head.weight")) else p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    assert not padded.head.weight.grad[97:].any()  # the padding never learns

    tokenizer = registry.tokenizer.build(Component("bytes"), Context())
    config_257 = attrs.evolve(config, vocab_size=257)
    saved = {}
    for multiple in (1, 64):
        torch.manual_seed(0)
        saved[multiple] = save_model(tmp_path / str(multiple), GPT(attrs.evolve(config_257, vocab_multiple=multiple)), tokenizer)
    for name in ("model.safetensors", "config.json"):
        assert (saved[64] / name).read_bytes() == (saved[1] / name).read_bytes()
    loaded = load_model_files(saved[64])
    reloaded = GPT(attrs.evolve(loaded.model_config, vocab_multiple=128))
    reloaded.load_state_dict(loaded.state_dict)  # the real rows in, zero padding
    assert reloaded.tok_emb.weight.shape[0] == 384 and not reloaded.tok_emb.weight[257:].any()
    assert torch.equal(reloaded.state_dict()["tok_emb.weight"], loaded.state_dict["tok_emb.weight"])
