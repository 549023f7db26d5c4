"""The one GPU check: training and decoding speed, instruction fine-tuning time and GPT-2 XL memory on
one CUDA device, against the references in the same run, in under 5 minutes.

The device has no package registry and lacks gptkit, llms-from-scratch and tomli-w, so a prepare
step here (with PyPI) puts their wheels and GPT-2's vocabulary files into .gpu_check/, which git
ignores and which is rebuilt each time, so that the gptkit wheel is the code under test:

    python benchmarks/gpu_check.py --prepare

Then on the device, from the repository root, carrying .gpu_check (the device tool's `carry`):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py [--peak-tflops 989] [--budget 280]

(a session's call: command "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py", carry [".gpu_check"],
timeout_s 330, which leaves room in the 15 device minutes for a rerun.)

Where gptkit does not import, the script installs the carried wheels into /tmp/gpu_check_site and
uses them. It writes its table to $OUT/gpu_check.md (or --out) row by row as it goes and prints it
at the end. Each part runs under its own `try`: a part that fails is a row saying why, and the rest
still run; a part that would overrun `--budget` seconds is skipped with a row saying so.

Parts: GPT-2 124M, T 1024, bf16 autocast training (gptkit + compile, padded vocab; llms-from-scratch
GPTModel, GPTModelFast + compile, HF GPT-2 + compile; tokens/s, MFU = tokens/s x (6N + 12 L T d) over
the dense bf16 peak, peak memory); decoding 124M bf16, batch 1 and 8, 256 new tokens (gptkit with
the growing cache, gptkit static cache + CUDA graph, HF generate); instruct_medium's training at
GPT-2 medium sizes with random weights (2 epochs, eval every 5) against the original ch07 loop, wall
time of the whole training call; GPT-2 XL full fine-tuning peak memory at batch 8, T 1024.

`--smoke` runs every code path on CPU with tiny sizes and torch.compile's eager backend (CI runs it,
tests/test_gpu_check.py, so the script cannot rot between devices); its figures mean nothing. CUDA
graph capture itself (gptkit.generation.cuda_graphed) cannot run on CPU: smoke runs the same static
step uncaptured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PREPARED = ROOT / ".gpu_check"
SITE = Path(tempfile.gettempdir()) / "gpu_check_site"
CARRIED = ("llms-from-scratch", "tomli-w")  # what the device's image lacks, besides gptkit
DATA = ROOT / "experiments" / "data" / "instruction-data.json"
# Dense bf16 matrix peaks by the vendors' datasheets (SXM parts), TFLOP/s; --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


def prepare() -> None:
    """.gpu_check/: wheels of gptkit (built from this tree), llms-from-scratch and tomli-w (the
    versions installed here), and GPT-2's vocabulary files."""
    from importlib.metadata import version

    shutil.rmtree(PREPARED, ignore_errors=True)
    wheels = PREPARED / "wheels"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    for leftover in ("build", "gptkit.egg-info"):  # the build's leftovers: a stale egg-info would shadow the installed entry points
        shutil.rmtree(ROOT / leftover, ignore_errors=True)
    pinned = [f"{name}=={version(name)}" for name in CARRIED]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "-d", str(wheels), *pinned], check=True)
    vocab = vocab_dir()
    if vocab is None:
        sys.exit("error: GPT-2's vocabulary (encoder.json, vocab.bpe) not found beside the checkout (../shared/data/gpt2)")
    shutil.copytree(vocab, PREPARED / "gpt2")
    print(f"prepared {PREPARED}: {', '.join(sorted(p.name for p in wheels.iterdir()))}, gpt2/")


def vocab_dir() -> Path | None:
    """GPT-2's encoder.json + vocab.bpe: carried in .gpu_check/, else from ../shared/data beside the checkout."""
    for folder in (PREPARED / "gpt2", *(p / "shared" / "data" / "gpt2" for p in ROOT.parents)):
        if (folder / "vocab.bpe").is_file():
            return folder
    return None


def import_gptkit() -> None:
    """Make gptkit, its plugins and the references importable: as installed, else from the carried wheels."""
    if all(importlib.util.find_spec(name) for name in ("gptkit", "gptkit_plugins", "llms_from_scratch", "tomli_w")):
        return
    wheels = sorted((PREPARED / "wheels").glob("*.whl"))
    if not wheels:
        sys.exit(f"error: gptkit is not installed and {PREPARED / 'wheels'} holds no wheels: run --prepare first")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(SITE), *map(str, wheels)],
        check=True,
    )
    sys.path.insert(0, str(SITE))
    importlib.invalidate_caches()


class Table:
    """Rows of (part, what, figure, note), appended to a markdown file as they come."""

    def __init__(self, path: Path, header: str):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = [header, "", "| part | what | figure | note |", "| --- | --- | --- | --- |"]
        self.write()

    def row(self, part: str, what: str, figure: str, note: str = "") -> None:
        line = f"| {part} | {what} | {figure} | {note} |"
        print(line, flush=True)
        self.lines.append(line)
        self.write()

    def write(self) -> None:
        self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


class Check:
    """The run's settings: device, sizes (full or smoke) and the time budget."""

    def __init__(self, args):
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.deadline = time.monotonic() + args.budget
        self.cuda = self.device.type == "cuda"
        self.name = torch.cuda.get_device_name() if self.cuda else "cpu (smoke)"
        self.peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in self.name), None)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> str:
        return f"{torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if self.cuda else "n/a (cpu)"

    def left(self) -> float:
        return self.deadline - time.monotonic()


def timed_part(check: Check, table: Table, part: str, needs_s: float):
    """Run a part unless under `needs_s` seconds are left; a failure becomes a row."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            if check.left() < needs_s:
                table.row(part, "skipped", "-", f"{check.left():.0f} s left of the budget, needs about {needs_s:.0f}")
                return
            start = time.monotonic()
            try:
                fn(*args)
            except Exception as exc:  # one part's failure must not cost the others
                traceback.print_exc()
                table.row(part, "FAILED", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            finally:
                print(f"# {part}: {time.monotonic() - start:.0f} s", flush=True)
                gc_cuda(check)

        return run

    return wrap


def gc_cuda(check: Check) -> None:
    import gc

    gc.collect()
    if check.cuda:
        torch.cuda.empty_cache()


# --- training, GPT-2 124M ------------------------------------------------------------------------


def train_models(sizes: dict):
    """name -> (model, note, compile) for gptkit and the references, all with fp32 weights."""
    from llms_from_scratch.ch04 import GPTModel, GPTModelFast
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptkit.model import GPT, GPTConfig

    def hf():
        config = GPT2Config(vocab_size=sizes["vocab_size"], n_positions=sizes["context_length"], n_embd=sizes["emb_dim"],
                            n_head=sizes["n_heads"], n_layer=sizes["n_layers"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
        model.config.use_cache = False
        return HFLogits(model)

    original = dict(sizes, drop_rate=0.0, qkv_bias=True)
    return {  # the references by their expected speed, fastest first: a short budget drops the slowest
        "gptkit + compile, model and loss (vocab 50304)": (lambda: GPT(GPTConfig(**sizes, qkv_bias=True, vocab_multiple=64)), True),
        "llms-from-scratch GPTModelFast + compile (vocab 50304)": (lambda: GPTModelFast(dict(original, vocab_size=padded(sizes["vocab_size"]))), True),
        "HF GPT-2 + compile": (hf, True),
        "llms-from-scratch GPTModel": (lambda: GPTModel(original), False),
    }


def padded(vocab: int, multiple: int = 64) -> int:
    return -(-vocab // multiple) * multiple


class HFLogits(torch.nn.Module):
    """transformers' GPT2LMHeadModel as a function of token ids to logits, like the others."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(input_ids=idx).logits


def flops_per_token(n_params: int, sizes: dict, seq: int) -> float:
    """Training FLOPs per token: 6N for the weights' matmuls (forward and backward) plus 12 L T d for attention."""
    return 6 * n_params + 12 * sizes["n_layers"] * seq * sizes["emb_dim"]


def training_part(check: Check, table: Table, sizes: dict, batch: int, steps: int) -> None:
    from gptkit.model import GPT, GPTConfig

    seq = sizes["context_length"]
    with torch.device("meta"):
        n = GPT(GPTConfig(**sizes, qkv_bias=True)).num_parameters(exclude_embeddings=True)
    per_token = flops_per_token(n, sizes, seq)
    data = torch.randint(0, sizes["vocab_size"], (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = (data[:, :-1].pin_memory() if check.cuda else data[:, :-1]), data[:, 1:]
    inputs, targets = inputs.to(check.device, non_blocking=True), targets.to(check.device, non_blocking=True)
    for name, (build, compiled) in train_models(sizes).items():
        if check.left() < (60 if compiled else 20) and not check.smoke:
            table.row("train 124M", name, "skipped", f"{check.left():.0f} s left")
            continue
        check.reset_memory()
        torch.manual_seed(0)
        with torch.device(check.device):
            model = build()
        rate, warmup = training_speed(check, model, compiled, inputs, targets, steps, gptkit=name.startswith("gptkit"))
        del model
        mfu = f"MFU {rate * per_token / (check.peak * 1e12):.1%}" if check.peak else "MFU: no peak known (--peak-tflops)"
        table.row("train 124M", name, f"{rate:,.0f} tokens/s", f"{mfu}, peak {check.peak_gb()}, warm-up {warmup:.0f} s, batch {batch} x {seq}")
        gc_cuda(check)


def training_speed(check: Check, model, compiled: bool, inputs, targets, steps: int, gptkit: bool) -> tuple[float, float]:
    """(tokens/s over `steps` timed steps, seconds of the 2 warm-up steps, compile included): bf16
    autocast over fp32 weights, gptkit's fused AdamW, fp32 loss; the loss compiled as well for
    gptkit (as its training engine does with train.compile), eager for the references (as their scripts)."""
    from gptkit.evaluation import lm_loss
    from gptkit.training import build_optimizer

    model.train()
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), device=check.device)
    forward = torch.compile(model) if compiled else model
    loss_fn = torch.compile(lm_loss) if gptkit and compiled else lm_loss

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(check.device.type, dtype=torch.bfloat16):
            loss = loss_fn(forward(inputs), targets)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(2):
        step()
    check.sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    check.sync()
    return steps * inputs.numel() / (time.perf_counter() - start), warmup


# --- decoding, GPT-2 124M --------------------------------------------------------------------------


def decoding_part(check: Check, table: Table, sizes: dict, new_tokens: int, repeats: int) -> None:
    import transformers

    from bench_generate import best_tokens_per_s, gptkit_run, hf_run, prompts

    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    with torch.device(check.device):
        ours = GPT(GPTConfig(**sizes, qkv_bias=True)).to(torch.bfloat16).eval()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=sizes["vocab_size"], n_positions=sizes["context_length"], n_embd=sizes["emb_dim"], n_head=sizes["n_heads"], n_layer=sizes["n_layers"],
    )).to(check.device, torch.bfloat16).eval()

    def synced(run):
        def timed():
            tokens = run()
            check.sync()
            return tokens

        return timed

    for batch in (1, 8):
        ids = prompts(batch, check.device)
        runs = {
            "gptkit, growing cache (eager)": gptkit_run(ours, ids, new_tokens, static_cache=False),
            "gptkit, static cache" + (" + CUDA graph" if check.cuda else " (no graph on CPU)"): gptkit_run(ours, ids, new_tokens, static_cache=True),
            "HF generate": hf_run(hf, ids, new_tokens),
        }
        rates = best_tokens_per_s({k: synced(v) for k, v in runs.items()}, repeats)
        hf_rate = rates["HF generate"]
        for name, rate in rates.items():
            table.row(f"decode 124M bf16 b{batch}", name, f"{rate:,.0f} tokens/s", f"{rate / hf_rate:.2f}x HF, {new_tokens} new tokens, best of {repeats}")


def compiled_decoding_part(check: Check, table: Table, sizes: dict, new_tokens: int, repeats: int) -> None:
    """`generate --compile`: the static step through torch.compile (and, on CUDA, inside the graph)."""
    from bench_generate import best_tokens_per_s, gptkit_run, prompts

    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    with torch.device(check.device):
        ours = GPT(GPTConfig(**sizes, qkv_bias=True)).to(torch.bfloat16).eval()
    start = time.perf_counter()
    run = gptkit_run(ours, prompts(1, check.device), new_tokens, static_cache=True, compile=True)
    run()
    check.sync()
    compile_s = time.perf_counter() - start
    rate = best_tokens_per_s({"compile": run}, repeats)["compile"]
    table.row("decode 124M bf16 b1", "gptkit, static cache + torch.compile" + (" + CUDA graph" if check.cuda else ""), f"{rate:,.0f} tokens/s",
              f"generate --compile; first run (compile) {compile_s:.0f} s, not timed")


# --- instruction fine-tuning, GPT-2 medium sizes ---------------------------------------------------


def instruct_part(check: Check, table: Table, label: str, sizes: dict, records: int | None) -> None:
    """gptkit's training.fit on experiments/instruct_medium.toml with random weights, and ch07's
    train_model_simple on the same split, each timed over its whole training call."""
    from gptkit.config import load_config
    from gptkit.data import split_dataset
    from gptkit.plugins import registry
    from gptkit.runs import setup_run
    from gptkit.training import fit

    out = Path(tempfile.mkdtemp(prefix="gpu-check-instruct-"))
    overrides = [
        "~init.checkpoint", *(f"model.{k}={v}" for k, v in sizes.items()), "model.qkv_bias=true", f"run.device={check.device.type}", f"run.out_dir={out}",
        f"data.dataset.path={DATA}", f"data.tokenizer={{name = 'gpt2', path = '{vocab_dir()}'}}", "train.save_best=false",
    ]
    if check.smoke:
        overrides += ["train.max_steps=2", "train.eval_every=1", "train.eval_batches=1", "generate.max_new_tokens=4"]
    try:
        run = setup_run(load_config(ROOT / "experiments" / "instruct_medium.toml", overrides))
        parts = split_dataset(registry.dataset.build(run.config.data.dataset, run.ctx), run.config.data.split, run.config.data.split_order)
        collator = registry.collator.build(run.config.data.collator, run.ctx)
        check.sync()
        start = time.perf_counter()
        fit(run, parts["train"], parts["val"], collator)
        check.sync()
        seconds = time.perf_counter() - start
        table.row(f"instruct {label}", f"gptkit training.fit ({run.precision})", f"{seconds:.1f} s", f"{run.step} steps, random weights, eval every 5")
        encoding = run.tokenizer.encoding
        del run
        gc_cuda(check)
        seconds, steps = original_instruct(check, sizes, records, encoding)
        table.row(f"instruct {label}", "original ch07 train_model_simple (fp32)", f"{seconds:.1f} s", f"{steps} steps, same split")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def original_instruct(check: Check, sizes: dict, records: int | None, encoding) -> tuple[float, int]:
    """ch07's main script, its model random: the 85/10/5 split, batch 8, AdamW lr 5e-5 wd 0.1,
    2 epochs, eval_freq 5, eval_iter 5, a sample after each epoch."""
    from torch.utils.data import DataLoader
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import train_model_simple
    from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn, format_input

    data = json.loads(DATA.read_text(encoding="utf-8"))[:records]
    train_n, test_n = int(len(data) * 0.85), int(len(data) * 0.1)
    train, val = data[:train_n], data[train_n + test_n :]
    collate = functools.partial(custom_collate_fn, device=check.device, allowed_max_length=1024)
    torch.manual_seed(123)
    loaders = [DataLoader(InstructionDataset(part, encoding), batch_size=8, collate_fn=collate, shuffle=shuffle, drop_last=shuffle)
               for part, shuffle in ((train, True), (val, False))]
    model = GPTModel(dict(sizes, drop_rate=0.0, qkv_bias=True)).to(check.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    epochs = 1 if check.smoke else 2
    check.sync()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr), plain_fp32():
        train_model_simple(model, loaders[0], loaders[1], optimizer, check.device, num_epochs=epochs, eval_freq=5, eval_iter=5,
                           start_context=format_input(val[0]), tokenizer=encoding)
    check.sync()
    return time.perf_counter() - start, epochs * len(loaders[0])


@contextlib.contextmanager
def plain_fp32():
    """fp32 matmuls without TF32, as the original script runs them, whatever gptkit's runs switched on."""
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    setattr(matmul, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        setattr(matmul, name, before)


# --- GPT-2 XL full fine-tuning memory --------------------------------------------------------------


def memory_part(check: Check, table: Table, sizes: dict, batch: int, seq: int) -> None:
    """Peak memory of full fine-tuning steps (fp32 weights, bf16 autocast, fused AdamW), with the
    blocks' activations kept and recomputed in backward."""
    from gptkit.distributed import checkpoint_activations
    from gptkit.evaluation import lm_loss
    from gptkit.model import GPT, GPTConfig
    from gptkit.training import build_optimizer

    data = torch.randint(0, sizes["vocab_size"], (batch, seq + 1), device=check.device)
    for recompute in (False, True):
        check.reset_memory()
        with torch.device(check.device):
            model = GPT(GPTConfig(**sizes, qkv_bias=True, vocab_multiple=64)).train()
        if recompute:
            checkpoint_activations(model)  # what train.activation_checkpointing does
        optimizer = build_optimizer(model, lr=5e-5, weight_decay=0.1, betas=(0.9, 0.999), device=check.device)
        start = time.perf_counter()
        for _ in range(2):  # the second step holds Adam's moments as well
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(check.device.type, dtype=torch.bfloat16):
                logits = model(data[:, :-1])
            lm_loss(logits, data[:, 1:]).backward()
            optimizer.step()
        check.sync()
        how = "activation checkpointing" if recompute else "activations kept"
        table.row("finetune XL memory", f"gptkit full fine-tuning, {how}", check.peak_gb(),
                  f"peak allocated, batch {batch} x {seq}, bf16 autocast, fused AdamW, {model.num_parameters() / 1e9:.2f}B parameters, "
                  f"2 steps {time.perf_counter() - start:.1f} s")
        del model, optimizer, logits
        gc_cuda(check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="build .gpu_check/ (wheels, vocabulary) here, then stop")
    parser.add_argument("--smoke", action="store_true", help="every code path on CPU with tiny sizes (figures mean nothing)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, TFLOP/s (default: looked up by name)")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds; parts that would overrun it are skipped")
    parser.add_argument("--batch", type=int, default=16, help="training batch of the 124M part")
    parser.add_argument("--out", type=Path, help="the table's file (default: $OUT/gpu_check.md, else ./gpu_check.md)")
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return
    import_gptkit()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here (use --smoke to run the code paths on CPU)")
    check = Check(args)
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.md"
    table = Table(out, f"# gptkit GPU check on {check.name}: torch {torch.__version__}, peak bf16 {check.peak or '?'} TFLOP/s")
    torch.set_num_threads(min(torch.get_num_threads(), 4) if args.smoke else torch.get_num_threads())

    from gptkit import plugins
    from gptkit.presets import PRESETS

    plugins.load()
    if args.smoke:  # torch.compile traces (dynamo) but generates no code (no inductor): seconds, not minutes
        torch.compile = functools.partial(torch.compile, backend="eager")
        small = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2)
        train = dict(sizes=small, batch=2, steps=1)
        decode = dict(sizes=dict(small, context_length=64), new_tokens=8, repeats=1)
        instruct = dict(label="tiny", sizes=dict(small, context_length=256), records=24)
        memory = dict(sizes=small, batch=2, seq=64)
    else:
        train = dict(sizes=PRESETS["gpt2-124M"], batch=args.batch, steps=10)
        decode = dict(sizes=PRESETS["gpt2-124M"], new_tokens=256, repeats=3)
        instruct = dict(label="medium (355M)", sizes=PRESETS["gpt2-355M"], records=None)
        memory = dict(sizes=PRESETS["gpt2-1558M"], batch=8, seq=1024)
    # Cheapest first; training's three compiles come last but one, the optional compiled decoding last.
    timed_part(check, table, "finetune XL memory", 20)(memory_part)(check, table, *memory.values())
    timed_part(check, table, "decode 124M", 30)(decoding_part)(check, table, *decode.values())
    timed_part(check, table, "instruct", 40)(instruct_part)(check, table, *instruct.values())
    timed_part(check, table, "train 124M", 60)(training_part)(check, table, *train.values())
    timed_part(check, table, "decode 124M compiled", 60)(compiled_decoding_part)(check, table, *decode.values())
    print("\n" + out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
