"""What checkpoint checksums cost on a GPT-2 124M run checkpoint (random weights, AdamW state after
one step): the time to save it (checksums included), to verify its model files and its training
state, and to load each with and without the check. Caches are warm (the files were just written),
as when a run resumes or `gptkit generate` reads a recent checkpoint; `--cold` drops the page cache
first (root only), as after a reboot.

    python benchmarks/bench_checkpoint_verify.py [--threads 2] [--rounds 3] [--cold]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from gptkit import checkpoint, plugins
from gptkit.config import Component
from gptkit.interfaces import Context
from gptkit.model import GPT, GPTConfig
from gptkit.presets import PRESETS
from gptkit.training import build_optimizer


def checkpoint_124m(folder: Path) -> tuple[Path, float]:
    """A run checkpoint of GPT-2 124M with its optimizer state; (its folder, seconds to save it)."""
    model = GPT(GPTConfig(**PRESETS["gpt2-124M"]))
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.999), device=torch.device("cpu"))
    model(torch.randint(0, 50257, (1, 8))).sum().backward()
    optimizer.step()
    tokenizer = plugins.registry.tokenizer.build(Component("bytes"), Context())
    started = time.perf_counter()
    path = checkpoint.save_checkpoint(folder, 1, model, tokenizer, {"step": 1, "optimizer": optimizer.state_dict()}, keep=1)
    return path, time.perf_counter() - started


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(function, rounds: int, cold: bool) -> tuple[float, float]:
    """The median (wall, CPU) seconds of `function()` over `rounds` calls; CPU time is what a busy
    machine does not inflate."""
    times = []
    for _ in range(rounds):
        if cold:
            drop_page_cache()
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each measurement (root)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    real_verify = checkpoint.verify
    with tempfile.TemporaryDirectory(prefix="gptkit-verify-") as work:
        path, save_seconds = checkpoint_124m(Path(work))
        sizes = {p.name: p.stat().st_size for p in path.iterdir()}
        print(f"checkpoint {path.name}: " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(sizes.items())))
        print(f"save (checksums included): {save_seconds:.2f} s")
        rows = {
            "verify model files": lambda: real_verify(path, state=False),
            "verify training state": lambda: real_verify(path, state=True),
            "load model files (checked)": lambda: checkpoint.load_model_files(path),
            "load training state (checked)": lambda: checkpoint.load_training_state(path),
        }
        results = {name: timed(function, args.rounds, args.cold) for name, function in rows.items()}
        checkpoint.verify = lambda folder, state: None
        try:
            results["load model files (unchecked)"] = timed(lambda: checkpoint.load_model_files(path), args.rounds, args.cold)
            results["load training state (unchecked)"] = timed(lambda: checkpoint.load_training_state(path), args.rounds, args.cold)
        finally:
            checkpoint.verify = real_verify
    for name, (wall, cpu) in results.items():
        print(f"{name:34s} {wall:6.2f} s wall {cpu:6.2f} s CPU")
    hashed = sum(sizes.values()) / 1e9
    wall, cpu = (results["verify model files"][i] + results["verify training state"][i] for i in (0, 1))
    print(f"verify all: {hashed:.2f} GB in {wall:.2f} s wall ({hashed / wall:.2f} GB/s), {cpu:.2f} s CPU, {'cold' if args.cold else 'warm'} cache")

if __name__ == "__main__":
    main()
