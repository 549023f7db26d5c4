"""Components that wrap other components, found by name when they are built: the way most research
plugins start (an attention with an extra mask, a norm around a built-in, a sampler that edits the
logits before top-k). Registered as attention `acme.probed`, norm `acme.probed-norm` and sampler
`acme.banned`.

The probes build the component named `inner` (a built-in by default) and record the root mean square
of its output at every call in `module.last_rms`, for a look at activations during training or
generation; the model computes exactly what `inner` alone computes, with the same parameter names,
so pretrained weights load. `acme.banned` sets the logits of `banned` token ids to -inf, then lets
`top-k` pick.
"""

import attrs
import torch

from gptkit import hookimpl
from gptkit.config import Component


@attrs.define
class ProbeParams:
    inner: str = "causal"  # the registered component to wrap; its own parameters stay at their defaults


@attrs.define
class NormProbeParams:
    inner: str = "layernorm"


@attrs.define
class BannedParams:
    banned: list[int] = attrs.field(factory=list)  # token ids never to sample
    top_k: int = attrs.field(default=40, validator=attrs.validators.ge(1))
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))


def record_rms(module, inputs, output):
    """A forward hook: keep the RMS of the output, detached, on the module."""
    module.last_rms = output.detach().float().pow(2).mean().sqrt()


@hookimpl
def register_components(registry):
    # `registry` is kept by the factories below and used when they run, after every plugin has
    # registered: it finds the built-ins and every other plugin's components as well as these.

    def probed_attention(config, inner):
        module = registry.attention.build(Component(inner), config)
        module.register_forward_hook(record_rms)
        return module  # the inner module itself: its parameter names and KV-cache support stay

    def probed_norm(config, inner):
        module = registry.norm.build(Component(inner), config)
        module.register_forward_hook(record_rms)
        return module

    def banned_top_k(ctx, banned, top_k, temperature):
        top_k_sampler = registry.sampler.build(Component("top-k", {"top_k": top_k, "temperature": temperature}), ctx)

        def sample(logits, generator=None):
            if banned:
                logits = logits.index_fill(-1, torch.tensor(banned, device=logits.device), float("-inf"))
            return top_k_sampler(logits, generator)

        return sample

    registry.attention.register("acme.probed", probed_attention, params=ProbeParams, doc="Another attention (default causal), its output RMS recorded.")
    registry.norm.register("acme.probed-norm", probed_norm, params=NormProbeParams, doc="Another norm (default layernorm), its output RMS recorded.")
    registry.sampler.register("acme.banned", banned_top_k, params=BannedParams, doc="top-k sampling that never picks the `banned` token ids.")
