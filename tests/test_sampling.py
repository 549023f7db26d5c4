"""Samplers: every registered one keeps the contract; top-k and top-p sample the renormalised
distribution they promise (chi-square goodness of fit, fixed seed, so the test is deterministic)."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import Component
from gptkit.interfaces import Context
from gptkit.plugins import registry
from tinymodel import one_thread  # noqa: F401 (autouse fixture)

DRAWS = 40_000


def build(name: str, **params):
    return registry.sampler.build(Component(name, params), Context())


def logits_row(vocab: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 2.0


def draws(sampler, logits: torch.Tensor, n: int = DRAWS) -> torch.Tensor:
    return sampler(logits.expand(n, -1), torch.Generator().manual_seed(1234))


def chi_square_p_value(samples: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """P-value of the counts of `samples` against `expected_probs` (over its nonzero entries)."""
    support = expected_probs > 0
    counts = torch.bincount(samples, minlength=len(expected_probs)).double()
    assert counts[~support].sum() == 0, "sampled a token of zero probability"
    expected = expected_probs[support].double() * len(samples)
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    df = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


@pytest.mark.parametrize("name", registry.sampler.names())
def test_every_sampler_returns_one_id_per_row(name):
    sampler = build(name)
    logits = torch.randn(5, 40)
    ids = sampler(logits, torch.Generator().manual_seed(0))
    assert ids.shape == (5,) and ids.dtype == torch.long
    assert ((ids >= 0) & (ids < 40)).all()


def test_top_k_never_samples_outside_the_k_largest():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(3))
    sampler = build("top-k", top_k=5, temperature=2.0)
    allowed = torch.topk(logits, 5, dim=-1).indices
    for _ in range(200):
        ids = sampler(logits, torch.Generator().manual_seed(_))
        assert (allowed == ids[:, None]).any(dim=-1).all()


@pytest.mark.parametrize("top_k, temperature", [(5, 1.0), (8, 0.7)])
def test_top_k_matches_renormalised_probabilities(top_k, temperature):
    logits = logits_row()
    expected = torch.zeros_like(logits)
    kept = torch.topk(logits, top_k).indices
    expected[kept] = torch.softmax(logits[kept] / temperature, dim=-1)
    samples = draws(build("top-k", top_k=top_k, temperature=temperature), logits)
    assert chi_square_p_value(samples, expected) > 1e-3


def nucleus_probs(logits: torch.Tensor, p: float, temperature: float) -> torch.Tensor:
    """The renormalised nucleus, written out plainly: the most likely tokens until their mass reaches p."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    expected = torch.zeros_like(probs)
    mass = 0.0
    for i in torch.argsort(probs, descending=True).tolist():
        expected[i] = probs[i]
        mass += float(probs[i])
        if mass >= p:
            break
    return expected / expected.sum()


@pytest.mark.parametrize("top_p, temperature", [(0.5, 1.0), (0.9, 1.3), (0.99, 0.8)])
def test_top_p_matches_renormalised_nucleus(top_p, temperature):
    logits = logits_row(seed=5)
    expected = nucleus_probs(logits, top_p, temperature)
    assert 1 < int((expected > 0).sum()) < len(logits)  # a real cut, not all or one
    samples = draws(build("top-p", top_p=top_p, temperature=temperature), logits)
    assert chi_square_p_value(samples, expected) > 1e-3


@pytest.mark.parametrize("name, params", [("top-k", dict(top_k=5, temperature=1.5)), ("top-p", dict(top_p=0.8))])
def test_the_same_seed_gives_the_same_draws(name, params):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    sampler = build(name, **params)
    draws = [sampler(logits, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert all(torch.equal(draws[0], d) for d in draws)
    assert not all(torch.equal(sampler(logits, torch.Generator().manual_seed(s)), draws[0]) for s in range(8))


def test_top_p_keeps_at_least_the_most_likely_token():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert build("top-p", top_p=1e-6)(logits, torch.Generator().manual_seed(0)).item() == 1


def test_temperature_zero_is_greedy():
    logits = torch.randn(4, 50)
    for name, params in (("top-k", dict(top_k=10)), ("top-p", dict(top_p=0.9))):
        ids = build(name, temperature=0.0, **params)(logits, None)
        assert torch.equal(ids, logits.argmax(-1))


def test_chi_square_detects_a_wrong_distribution():
    """The test's own check: uniform draws over the top-k are rejected."""
    logits = logits_row()
    kept = torch.topk(logits, 5).indices
    expected = torch.zeros_like(logits)
    expected[kept] = torch.softmax(logits[kept], dim=-1)
    uniform = kept[torch.randint(0, 5, (DRAWS,), generator=torch.Generator().manual_seed(0))]
    assert chi_square_p_value(uniform, expected) < 1e-6
