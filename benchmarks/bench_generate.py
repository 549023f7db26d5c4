"""Generation speed: gptkit vs transformers' `generate` vs the original scripts' uncached loop.

GPT-2 124M sizes with random weights (speed does not depend on the values), a 16-token prompt,
256 new tokens (`--new-tokens`), greedy, end-of-text ignored, all in one run so the ratios share the
machine's state:

    flock /tmp/gptkit-cpu.lock .venv/bin/python benchmarks/bench_generate.py [--threads 2] [--repeats 3]

Each figure is the best of `--repeats` timed runs after a warm-up run: new tokens (all rows) over
the time of prefill + decode. Needs transformers and llms-from-scratch (the original scripts).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import torch

from gptkit.generation import generate_ids
from gptkit.model import GPT, GPTConfig
from gptkit_plugins.sampling import greedy

PROMPT_TOKENS = 16


def best_tokens_per_s(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Tokens/s of each run, best of `repeats`; the runs take turns so a change in the machine's
    load hits them alike."""
    for run in runs.values():
        run()  # warm-up: allocator, kernels, lazy init, packed weights
    best = dict.fromkeys(runs, float("inf"))
    tokens = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            tokens[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: tokens[name] / best[name] for name in runs}


def prompts(batch: int, device) -> torch.Tensor:
    return torch.randint(0, 50000, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(batch)).to(device)


def gptkit_run(model, ids: torch.Tensor, new_tokens: int, **kwargs) -> Callable[[], int]:
    rows = ids.tolist()

    def run() -> int:
        done = generate_ids(model, rows, max_new_tokens=new_tokens, sampler=greedy, **kwargs)
        assert all(len(c.new_ids) == new_tokens for c in done)
        return sum(len(c.new_ids) for c in done)

    return run


def hf_run(model, ids: torch.Tensor, new_tokens: int) -> Callable[[], int]:
    import transformers

    config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True, eos_token_id=None, pad_token_id=0
    )
    mask = torch.ones_like(ids)

    def run() -> int:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, generation_config=config)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    return run


def original_run(model, ids: torch.Tensor, new_tokens: int) -> Callable[[], int]:
    from llms_from_scratch.ch05 import generate

    def run() -> int:
        out = generate(model, ids, max_new_tokens=new_tokens, context_size=1024)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--skip-original", action="store_true", help="leave out the (slow) uncached original loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import transformers
    from llms_from_scratch.ch04 import GPTModel

    torch.manual_seed(0)
    ours = GPT(GPTConfig.from_preset("gpt2-124M", qkv_bias=True)).to(device).eval()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).to(device).eval()
    original = GPTModel(dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, drop_rate=0.0, qkv_bias=True))
    original = original.to(device).eval()

    print(f"# gptkit generation benchmark: GPT-2 124M, {PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens, greedy")
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, device {device}, threads {args.threads}, "
          f"{platform.processor() or platform.machine()}, best of {args.repeats}")
    one, eight = prompts(1, device), prompts(8, device)
    n = args.new_tokens
    r = {}
    for label, ids in (("b1", one), ("b8", eight)):
        runs = {f"gptkit fp32 {label}": gptkit_run(ours, ids, n), f"hf fp32 {label}": hf_run(hf, ids, n)}
        if label == "b1" and not args.skip_original:
            runs["original fp32 b1"] = original_run(original, ids, n)
        r.update(best_tokens_per_s(runs, args.repeats))
    ours.to(torch.bfloat16)
    hf.to(torch.bfloat16)
    r.update(best_tokens_per_s({"gptkit bf16 b1": gptkit_run(ours, one, n), "hf bf16 b1": hf_run(hf, one, n)}, args.repeats))
    for name, value in r.items():
        print(f"{name:<27} {value:8.1f} tokens/s")

    checks = [
        ("fp32 b1: gptkit / transformers", "gptkit fp32 b1", "hf fp32 b1", 1.2),
        ("fp32 b1: gptkit / original loop", "gptkit fp32 b1", "original fp32 b1", 3.0),
        ("fp32 b8: gptkit / transformers", "gptkit fp32 b8", "hf fp32 b8", 1.5),
        ("bf16 b1: gptkit / transformers bf16", "gptkit bf16 b1", "hf bf16 b1", 2.0),
    ]
    for name, ours_key, ref_key, target in checks:
        if ref_key in r:
            ratio = r[ours_key] / r[ref_key]
            print(f"{name:<38} {ratio:5.2f}x  (target >= {target}x: {'met' if ratio >= target else 'NOT met'})")

if __name__ == "__main__":
    main()
