"""Instruction fine-tuning speed on CPU: gptkit's training engine vs the original ch07 loop.

Both fine-tune GPT-2 124M sizes (random weights, untied head, qkv bias, no dropout) on the same
batches of 8 records of the 1,100-record set, padded per batch: gptkit with its engine
(`gptkit.training.fit`: masked-response collator, AdamW with weight-decay groups, its step timing from
metrics.jsonl), the original with llms-from-scratch's GPTModel, custom_collate_fn and
train_model_simple's step (calc_loss_batch, backward, AdamW lr 5e-5 weight decay 0.1). Rounds take
turns (original, gptkit fp32, gptkit auto, ...); the first step of each run is warm-up; a round's
figure is padded input tokens over the summed step times; the best round counts.

    python benchmarks/bench_instruct.py [--threads 2] [--steps 4] [--rounds 2]

Needs `pip install --no-deps llms-from-scratch psutil` and the GPT-2 vocabulary (tiktoken's cache,
or ../shared/data/gpt2).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gptkit.config import structure
from gptkit.data import split_dataset
from gptkit.plugins import registry
from gptkit.runs import setup_run
from gptkit.training import epoch_order, fit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "experiments" / "data" / "instruction-data.json"
VOCAB = ROOT.parent / "shared" / "data" / "gpt2"
SEED = 123


def config(precision: str, steps: int, out_dir: Path, threads: int):
    tokenizer = {"name": "gpt2", "path": str(VOCAB)} if VOCAB.is_dir() else {"name": "gpt2"}
    return structure({
        "run": {"name": "bench-instruct", "recipe": "instruct", "seed": SEED, "device": "cpu", "out_dir": str(out_dir), "threads": threads},
        "model": {"preset": "gpt2-124M", "qkv_bias": True, "tie_weights": False, "drop_rate": 0.0},
        "data": {
            "tokenizer": tokenizer,
            "dataset": {"name": "alpaca-json", "path": str(DATA)},
            "prompt": {"name": "alpaca"},
            "collator": {"name": "masked-response", "allowed_max_length": 1024},
            "split": [0.85, 0.05, 0.10],
            "split_order": ["train", "test", "val"],
        },
        "train": {"batch_size": 8, "lr": 5e-5, "weight_decay": 0.1, "precision": precision, "max_steps": steps,
                  "eval_every": 0, "eval_batches": 1, "save_best": False, "keep_checkpoints": 1},
    })


def engine_parts(precision: str, steps: int, out: Path, threads: int):
    """(run, train/val/test parts, collator) as the instruct recipe sets them up."""
    run = setup_run(config(precision, steps, out, threads))
    parts = split_dataset(registry.dataset.build(run.config.data.dataset, run.ctx), run.config.data.split, run.config.data.split_order)
    return run, parts, registry.collator.build(run.config.data.collator, run.ctx)


def engine_batches(steps: int, threads: int) -> list[list[list[int]]]:
    """The token ids of the engine's first `steps` batches (its epoch-0 order)."""
    _, parts, _ = engine_parts("fp32", steps, Path(tempfile.gettempdir()) / "bench-instruct-unused", threads)
    order = epoch_order(len(parts["train"]), SEED, 0)
    return [[parts["train"][i].input_ids for i in order[k * 8 : (k + 1) * 8]] for k in range(steps)]


def gptkit_round(precision: str, steps: int, threads: int) -> float:
    """Padded tokens/s of the engine over steps 2..N, from its own step timing (metrics.jsonl)."""
    out = Path(tempfile.mkdtemp(prefix="bench-instruct-"))
    try:
        run, parts, collator = engine_parts(precision, steps, out, threads)
        fit(run, parts["train"], parts["val"], collator)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        tokens = [b["tokens_seen"] - a["tokens_seen"] for a, b in zip(rows, rows[1:])]  # steps 2..N
        return sum(tokens) / sum(t / r["tokens_per_s"] for t, r in zip(tokens, rows[1:]))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def original_round(batches: list[list[list[int]]]) -> float:
    """Padded tokens/s over steps 2..N of the original loop on the same batches."""
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import calc_loss_batch
    from llms_from_scratch.ch07 import custom_collate_fn

    torch.manual_seed(SEED)
    cfg = dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, drop_rate=0.0, qkv_bias=True)
    model = GPTModel(cfg)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    tokens, seconds = 0, 0.0
    for step, batch in enumerate(batches):
        start = time.perf_counter()
        inputs, targets = custom_collate_fn(batch, allowed_max_length=1024)
        optimizer.zero_grad()
        loss = calc_loss_batch(inputs, targets, model, torch.device("cpu"))
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step:  # the first step is warm-up
            tokens, seconds = tokens + inputs.numel(), seconds + elapsed
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = engine_batches(args.steps, args.threads)
    best = {"original": 0.0, "gptkit fp32": 0.0, "gptkit auto": 0.0}
    for r in range(args.rounds):
        best["original"] = max(best["original"], original_round(batches))
        for precision in ("fp32", "auto"):
            best[f"gptkit {precision}"] = max(best[f"gptkit {precision}"], gptkit_round(precision, args.steps, args.threads))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()), flush=True)
    base = best["original"]
    print(f"\npadded tokens/s, GPT-2 124M sizes, batch 8, {args.threads} threads, best of {args.rounds} rounds of {args.steps} steps")
    for name, speed in best.items():
        print(f"  {name:<12} {speed:8.1f}  {speed / base:5.2f}x the original")


if __name__ == "__main__":
    main()
