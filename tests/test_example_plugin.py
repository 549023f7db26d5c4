"""The example plugin package (examples/acme-window-attention), pip-installed as a user would, is
listed, selected and validated by name, takes GPT-2's weights, and passes its own tests, which run
gptkit's conformance checks on it."""

import importlib.metadata

import pytest

from conftest import ROOT
from gpt2_fixtures import HF_TINY
from plugin_packages import gptkit, install, python

pytestmark = pytest.mark.slow  # pip-installs the package and runs it in subprocesses: `python -m pytest -m slow` (CI runs it)

EXAMPLE = ROOT / "examples" / "acme-window-attention"
TINY = str(ROOT / "experiments" / "tiny_generate.toml")

# GPT-2 weights (a tiny HF checkpoint) into acme.window with a window as long as the context: the
# same logits as the `causal` model the checkpoint loads as.
LOAD_GPT2 = """
import sys, attrs, torch
from gptkit import load_model
from gptkit.config import Component
from gptkit.model import GPT

gpt2, _ = load_model(sys.argv[1])
config = attrs.evolve(gpt2.config, attention=Component("acme.window", {"window": gpt2.config.context_length}))
windowed = GPT(config).eval()
windowed.load_state_dict(gpt2.state_dict())
ids = torch.arange(config.context_length)[None] % config.vocab_size
torch.testing.assert_close(windowed(ids), gpt2(ids), atol=0, rtol=0)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install(EXAMPLE, tmp_path_factory.mktemp("acme-window"))


def test_the_guide_quotes_the_module_as_it_is():
    """The README's excerpt of the example module is the module's own text, so it runs as written."""
    guide = (ROOT / "README.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Writing a new attention plugin") :]
    excerpt = section.split("```python\n")[1].split("```")[0]
    assert "class WindowAttention" in excerpt and excerpt in (EXAMPLE / "acme_window_attention.py").read_text(encoding="utf-8")
    wrapping = section[section.index("**Wrapping a built-in**") :].split("```python\n")[1].split("```")[0]
    assert "registry.attention.build(Component(inner), config)" in wrapping
    module = (EXAMPLE / "acme_probes.py").read_text(encoding="utf-8")
    pieces = wrapping.split("\n\n\n")  # the imports, record_rms, the start of the hook: each as the module has it, in its order
    assert len(pieces) == 3 and all(piece in module for piece in pieces)
    assert [module.index(piece) for piece in pieces] == sorted(module.index(piece) for piece in pieces)


def test_listed_with_its_origin(site):
    (dist,) = importlib.metadata.distributions(name="acme-window-attention", path=[str(site)])
    result = gptkit(site, "list", "attention")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "acme.window" in line]
    assert f"[acme-window-attention {dist.version} [acme_window]]" in line


def test_selected_by_name_with_a_validated_window(site, tmp_path):
    result = gptkit(site, "run", TINY, "model.attention.name=acme.window", "model.attention.window=8", f"run.out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you")
    assert '[model.attention]\nname = "acme.window"\nwindow = 8\n' in (tmp_path / "config.toml").read_text()
    bad = gptkit(site, "config", "validate", TINY, "model.attention.name=acme.window", "model.attention.window=0")
    assert bad.returncode == 2 and "model.attention.window: 'window' must be >= 1: 0" in bad.stderr


def test_gpt2_weights_load_into_it(site):
    result = python(site, "-c", LOAD_GPT2, str(HF_TINY))
    assert result.returncode == 0, result.stderr


def test_its_own_tests_pass(site):
    result = python(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE), PYTHONDONTWRITEBYTECODE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout


# Runs of the tiny experiment with each wrapping component of the example package (acme_probes.py)
# and with the component it wraps: the same generated text, and the same logits from the saved models.
WRAPPERS = """
import sys, attrs, torch, gptkit
from gptkit import load_config, load_model
from gptkit.config import Component
from gptkit.model import GPT

experiment, out = sys.argv[1], sys.argv[2]

def run(name, *overrides):
    gptkit.run(load_config(experiment, [f"run.out_dir={out}/{name}", *overrides]))
    return open(f"{out}/{name}/samples.txt").read(), load_model(f"{out}/{name}")[0].eval()

text, plain = run("plain")
ids = torch.arange(plain.config.context_length)[None] % plain.config.vocab_size
for name, overrides, inner in (
    ("attention", ["model.attention.name=acme.probed"], {"attention": Component("causal")}),
    ("norm", ["model.norm.name=acme.probed-norm"], {"norm": Component("layernorm")}),
):
    wrapped_text, wrapped = run(name, *overrides)
    assert wrapped_text == text, (name, wrapped_text, text)
    unwrapped = GPT(attrs.evolve(wrapped.config, **inner)).eval()
    unwrapped.load_state_dict(wrapped.state_dict())
    torch.testing.assert_close(wrapped(ids), unwrapped(ids), atol=0, rtol=0)
    torch.testing.assert_close(wrapped(ids), plain(ids), atol=0, rtol=0)
    probe = wrapped.blocks[0].attn if name == "attention" else wrapped.blocks[0].norm1
    assert probe.last_rms > 0
sampled, _ = run("sampler", "generate.sampler={name = 'acme.banned', top_k = 25, temperature = 1.0}")
assert sampled == text, (sampled, text)
print("ok")
"""


def test_components_wrapping_builtins_through_the_registry_they_were_given(site, tmp_path):
    result = python(site, "-c", WRAPPERS, TINY, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith("ok\n")
