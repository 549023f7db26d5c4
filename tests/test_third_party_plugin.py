"""A third-party attention plugin, packaged and pip-installed from a temp folder, works with no change to gptkit."""

import textwrap

import pytest

from conftest import ROOT
from plugin_packages import gptkit, install

PLUGIN_MODULE = '''
"""Causal linear attention (Katharopoulos et al. 2020): O(T) instead of O(T^2)."""
import torch
import torch.nn.functional as F
from torch import nn

from gptkit import hookimpl


class LinearAttention(nn.Module):
    supports_kv_cache = False

    def __init__(self, config, eps):
        super().__init__()
        self.n_heads, self.eps = config.n_heads, eps
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).unbind(2)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.einsum("bthd,bthe->bthde", k, v).cumsum(1)
        num = torch.einsum("bthd,bthde->bthe", q, kv)
        den = torch.einsum("bthd,bthd->bth", q, k.cumsum(1)).unsqueeze(-1) + self.eps
        return self.proj((num / den).reshape(b, t, c))


@hookimpl
def register_components(registry):
    import attrs

    @attrs.define
    class Params:
        eps: float = 1e-6

    registry.attention.register("acme.linear", LinearAttention, params=Params, doc="Causal linear attention.")
'''

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-attention"
version = "0.3.0"

[tool.setuptools]
py-modules = ["acme_attention", "acme_broken"]

[project.entry-points.gptkit]
acme = "acme_attention"
broken = "acme_broken"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    src = tmp_path_factory.mktemp("acme-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "acme_attention.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (src / "acme_broken.py").write_text("import a_module_that_does_not_exist\n")
    return install(src, tmp_path_factory.mktemp("acme"))


def test_listed_with_its_origin_and_broken_plugin_is_a_warning(plugin_site):
    result = gptkit(plugin_site, "list", "attention")
    assert result.returncode == 0, result.stderr
    assert "acme.linear" in result.stdout and "acme-attention 0.3.0 [acme]" in result.stdout
    assert "causal-reference" in result.stdout  # the rest still works
    assert "gptkit plugin 'broken' (acme-attention)" in result.stderr
    assert "a_module_that_does_not_exist" in result.stderr


def test_selected_by_name_in_an_experiment(plugin_site, tmp_path):
    tiny = ROOT / "experiments" / "tiny_generate.toml"
    result = gptkit(plugin_site, "run", str(tiny), "model.attention.name=acme.linear", f"run.out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you")
    assert 'name = "acme.linear"' in (tmp_path / "config.toml").read_text()


def test_parameters_are_validated(plugin_site):
    tiny = ROOT / "experiments" / "tiny_generate.toml"
    result = gptkit(plugin_site, "config", "validate", str(tiny), "model.attention.name=acme.linear", "model.attention.eps=-")
    assert result.returncode == 2 and "model.attention.eps: expected number, got string '-'" in result.stderr


def test_env_vars_control_autoloading(plugin_site):
    assert "acme.linear" not in gptkit(plugin_site, "list", "attention", GPTKIT_PLUGINS="").stdout
    only_acme = gptkit(plugin_site, "list", "attention", GPTKIT_PLUGINS="acme")
    assert "acme.linear" in only_acme.stdout and "broken" not in only_acme.stderr
    disabled = gptkit(plugin_site, "list", "attention", GPTKIT_DISABLE_PLUGINS="acme,broken")
    assert "acme.linear" not in disabled.stdout and disabled.stderr == ""
