"""Serving throughput: 32 concurrent clients x 64 new tokens against `gptkit serve`, against the
same requests sent one at a time.

    flock /tmp/gptkit-cpu.lock python benchmarks/bench_serve.py [--threads 2] [--repeats 3]
    python benchmarks/bench_serve.py --smoke      # a tiny model, 4 clients x 8 tokens: checks the script, not the speed

The server is the real command, `gptkit serve MODEL --threads 2 --max-batch 32`, in its own process;
the clients are threads of this one, each sending its own prompt (token ids of 8 to 39 tokens, so
the batch holds rows of different lengths) through the official `openai` client, greedy
(temperature 0), not streamed. "one at a time" sends the 32 requests in turn, each decoded alone;
"concurrent" sends them all at once, and the server decodes them together. The two take turns
`--repeats` times (the machine is shared); each row shows the best run: tokens/s is the new tokens
of all requests over the wall time from the first request to the last answer, latency a request's
own time from sending to its answer. Every answer must equal its own greedy completion, computed here
with gptkit.generation (no request lost or mixed up); the script fails otherwise.

The model is GPT-2 124M's shape (12 layers of 768, GPT-2's 50,257-token vocabulary) with random
weights: at one request a decoding step reads all 500 MB of fp32 weights for one token, which is
what bounds single-request serving, while a batch reads them once for all its rows; a tiny model
would instead measure Python overhead, and a larger one makes the one-at-a-time runs take many
minutes on 2 cores. The weights are drawn larger than GPT-2's init (N(0, 0.1)) so that greedy
choices are not near-ties that float rounding between batch sizes could flip. Needs the serve extra,
`openai`, and GPT-2's vocabulary files (`--vocab`, default ../shared/data/gpt2).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gptkit.checkpoint import save_model
from gptkit.config import Component
from gptkit.generation import generate_ids
from gptkit.interfaces import Context
from gptkit.model import GPT, GPTConfig
from gptkit.plugins import registry

ROOT = Path(__file__).resolve().parent.parent


def build_model(smoke: bool, vocab: Path, folder: Path):
    """The benchmark's model (see the docstring) and tokenizer, saved in `folder`."""
    torch.manual_seed(0)
    if smoke:
        config = GPTConfig(vocab_size=257, context_length=128, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
        tokenizer = registry.tokenizer.build(Component("bytes"), Context())
    else:
        config = GPTConfig.from_preset("gpt2-124M", qkv_bias=True)
        tokenizer = registry.tokenizer.build(Component("gpt2", {"path": str(vocab)}), Context())
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    save_model(folder, model, tokenizer)
    return model, tokenizer


def prompts(count: int, vocab_size: int) -> list[list[int]]:
    """`count` distinct prompts of 8 to 39 token ids."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size - 1, (8 + (7 * i) % 32,), generator=generator).tolist() for i in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "gptkit", "serve", str(folder), "--model-name", "bench", "--port", str(port),
               "--threads", str(threads), "--max-batch", str(max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            sys.exit(f"the server did not start: {server.stderr.read()[-3000:]}")
        time.sleep(0.2)


def run(client, requests: list[list[int]], new_tokens: int, concurrent: bool) -> dict:
    """Send the requests (all at once, or in turn): their answers, latencies and the wall time."""

    def one(prompt: list[int]) -> tuple[str, int, float]:
        start = time.perf_counter()
        response = client.completions.create(model="bench", prompt=prompt, max_tokens=new_tokens, temperature=0)
        return response.choices[0].text, response.usage.completion_tokens, time.perf_counter() - start

    start = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(one, requests))
    else:
        answers = [one(prompt) for prompt in requests]
    wall = time.perf_counter() - start
    latencies = sorted(a[2] for a in answers)
    tokens = sum(a[1] for a in answers)
    return dict(texts=[a[0] for a in answers], counts=[a[1] for a in answers], wall=wall, tokens=tokens, tokens_per_s=tokens / wall,
                p50=statistics.median(latencies), p95=latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=Path, default=ROOT.parent / "shared" / "data" / "gpt2", help="folder with GPT-2's encoder.json + vocab.bpe")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 4 clients x 8 tokens, one repeat (tests/test_bench_serve.py)")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.new_tokens, args.repeats = 4, 8, 1
    import openai

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model, tokenizer = build_model(args.smoke, args.vocab, Path(tmp) / "model")
        requests = prompts(args.clients, model.config.vocab_size)
        reference = generate_ids(model, requests, max_new_tokens=args.new_tokens, sampler=registry.sampler.build(Component("greedy"), Context()),
                                 eos_id=tokenizer.eos_id)
        expected = [(tokenizer.decode(c.new_ids), len(c.new_ids)) for c in reference]
        del model
        server, url = start_server(Path(tmp) / "model", args.threads, max(args.clients, 1))
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
            run(client, requests[:2], 4, concurrent=False)  # warm-up: first allocations, packed weights
            best = {}
            for _ in range(args.repeats):
                for mode, concurrent in (("one at a time", False), (f"{args.clients} concurrent", True)):
                    result = run(client, requests, args.new_tokens, concurrent)
                    wrong = [i for i, got in enumerate(zip(result["texts"], result["counts"])) if got != expected[i]]
                    if wrong:
                        sys.exit(f"{mode}: request {wrong[0]}'s answer is not its own greedy completion "
                                 f"({len(wrong)} of {len(requests)} wrong)")
                    if mode not in best or result["tokens_per_s"] > best[mode]["tokens_per_s"]:
                        best[mode] = result
        finally:
            server.terminate()
            server.wait(timeout=60)

    print(f"# gptkit serve: {args.clients} clients x {args.new_tokens} new tokens, greedy, "
          f"{'tiny smoke model' if args.smoke else 'GPT-2 124M shape (random weights)'}, server threads {args.threads}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, best of {args.repeats}")
    print("| requests | new tokens | wall s | tokens/s | p50 latency s | p95 latency s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, r in best.items():
        print(f"| {mode} | {r['tokens']} | {r['wall']:.1f} | {r['tokens_per_s']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    modes = list(best)
    ratio = best[modes[1]]["tokens_per_s"] / best[modes[0]]["tokens_per_s"]
    print(f"concurrent / one at a time: {ratio:.2f}x tokens/s (target >= 3x); every answer equals its own greedy completion")


if __name__ == "__main__":
    main()
