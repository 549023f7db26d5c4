"""Training speed on CPU: gptkit vs the original scripts' GPTModel (llms-from-scratch ch04) vs HF GPT-2.

All three train GPT-2 124M sizes with an untied head, dropout 0.1, no qkv bias, batch 2 x 256 tokens,
fp32, AdamW (lr 4e-4, weight decay 0.1) on the same random batches. gptkit uses its training
engine's optimizer (weight-decay groups, fused where available); the others use torch.optim.AdamW as
their scripts do. Rounds are interleaved (gptkit, original, HF, gptkit, ...) so machine noise hits
each alike; warmup steps are excluded; tokens/s is the median over rounds.

    flock /tmp/gptkit-cpu.lock .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

B, T, VOCAB, EMB, HEADS, LAYERS, DROP = 2, 256, 50257, 768, 12, 12, 0.1


def gptkit_setup():
    from gptkit import plugins
    from gptkit.model import GPT, GPTConfig
    from gptkit.training import build_optimizer

    plugins.load()
    config = GPTConfig(VOCAB, T, EMB, HEADS, LAYERS, drop_rate=DROP, qkv_bias=False, tie_weights=False)
    model = GPT(config)
    return model, build_optimizer(model, lr=4e-4, weight_decay=0.1, betas=(0.9, 0.999), device=torch.device("cpu"))


def original_setup():
    from llms_from_scratch.ch04 import GPTModel

    cfg = dict(vocab_size=VOCAB, context_length=T, emb_dim=EMB, n_heads=HEADS, n_layers=LAYERS, drop_rate=DROP, qkv_bias=False)
    model = GPTModel(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)


def hf_setup():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=T, n_embd=EMB, n_head=HEADS, n_layer=LAYERS,
        resid_pdrop=DROP, embd_pdrop=DROP, attn_pdrop=DROP, tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(cfg)
    model.config.use_cache = False
    forward = model.forward
    model.forward = lambda idx: forward(input_ids=idx).logits
    return model, torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)


def step(model, optimizer, inputs, targets) -> None:
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["gptkit", "original", "hf"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (B, T + 1))
    inputs, targets = data[:, :-1], data[:, 1:]
    setups = {"gptkit": gptkit_setup, "original": original_setup, "hf": hf_setup}
    models = {name: setups[name]() for name in args.only}
    for name, (model, optimizer) in models.items():
        model.train()
        for _ in range(args.warmup):
            step(model, optimizer, inputs, targets)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, optimizer) in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, inputs, targets)
            rates[name].append(args.steps * B * T / (time.perf_counter() - start))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {B} x {T}, fp32, untied head, "
          f"{args.rounds} rounds x {args.steps} steps (after {args.warmup} warmup)")
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"  {name:<9} {median[name]:7.1f} tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in r)})")
    if "gptkit" in median:
        for other in ("original", "hf"):
            if other in median:
                print(f"  gptkit / {other}: {median['gptkit'] / median[other]:.2f}x")


if __name__ == "__main__":
    main()
