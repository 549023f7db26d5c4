"""Peak CPU memory of one training step of GPT-2 medium: full fine-tuning vs LoRA (rank 16).

GPT-2 355M sizes (emb 1024, 24 layers, 16 heads, vocab 50257, tied head), random weights, fp32,
dropout 0 (LoRA's own dropout 0.05), batch 8 x 128 tokens, the engine's AdamW (gptkit.training).

Each case runs in a fresh subprocess, because torch keeps no CPU allocator statistics and the
process's RSS high-water mark (getrusage ru_maxrss) only ever grows. A case builds the model,
prepares it with its finetune strategy, builds the optimizer and takes one warm-up step on a tiny
batch, so that Adam's moments exist (the RSS then is "set-up"); "peak" is the high-water mark of
one step on the real batch, the steady state of training.

Every case runs twice: with glibc malloc's defaults, whose heap keeps the freed blocks of one
step's activations fragmented and resident (what a plain `gptkit run` on Linux holds), and with
MALLOC_MMAP_THRESHOLD_=65536, which gives every block of 64 KiB or more its own mapping, returned
on free, so the RSS follows the bytes torch actually holds.

    flock /tmp/gptkit-cpu.lock .venv/bin/python benchmarks/bench_finetune_memory.py [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from gptkit.config import Component
from gptkit.evaluation import lm_loss
from gptkit.interfaces import Context
from gptkit.model import GPT, GPTConfig
from gptkit.plugins import registry
from gptkit.training import build_optimizer

CASES = {"full": Component("full"), "lora r16": Component("lora", {"rank": 16})}
MALLOC = {"default": {}, "mmap>=64K": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
GIB = 1024**3


def rss_high_water() -> int:
    """Bytes: the most this process has held resident so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor) -> None:
    lm_loss(model(data[:, :-1]), data[:, 1:]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(case: str, batch: int, seq: int, threads: int) -> dict:
    """One case, in this (fresh) process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-355M")).train()
    registry.finetune.build(CASES[case], Context()).prepare(model)
    optimizer = build_optimizer(model, lr=5e-5, weight_decay=0.1, betas=(0.9, 0.999), device=torch.device("cpu"))
    train_step(model, optimizer, torch.randint(0, model.config.vocab_size, (1, 9)))  # creates Adam's moments
    set_up = rss_high_water()
    started = time.perf_counter()
    train_step(model, optimizer, torch.randint(0, model.config.vocab_size, (batch, seq + 1)))
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "set_up": set_up,
        "peak": rss_high_water(),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # set for the subprocess of one case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.batch, args.seq, args.threads)))
        return
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
    print(f"GPT-2 355M sizes, random weights, fp32, one step of batch {args.batch} x {args.seq} after a warm-up step, "
          f"AdamW, {args.threads} threads, torch {torch.__version__}; RSS high-water in GiB")
    print(f"  {'case':<9} {'malloc':<10} {'trainable':>12} {'set-up':>7} {'peak':>7} {'step +':>7} {'seconds':>8}")
    peaks = {}
    for malloc, env in MALLOC.items():
        for case in CASES:
            command = [sys.executable, __file__, "--case", case, *common]
            out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            peaks[case, malloc] = r["peak"]
            print(f"  {case:<9} {malloc:<10} {r['trainable']:>12,} {r['set_up'] / GIB:>7.2f} {r['peak'] / GIB:>7.2f} "
                  f"{(r['peak'] - r['set_up']) / GIB:>7.2f} {r['seconds']:>8.1f}", flush=True)
    for malloc in MALLOC:
        print(f"  LoRA peak / full peak, malloc {malloc}: {peaks['lora r16', malloc] / peaks['full', malloc]:.2f}")


if __name__ == "__main__":
    main()
