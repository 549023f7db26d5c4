"""Training on several processes (torch.distributed, gloo on CPU): 2 processes sharing the global
batch follow 1 process's losses, for ddp and fsdp, pretraining and instruction fine-tuning; a
checkpoint of 2 processes resumes on 1 and on 2; only rank 0 writes; bad input is one line, exit 2.

Each multi-process run is started the way users start them (`gptkit run --nproc 2`, or torchrun
itself) on a tiny model, and run once per module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gptkit
from gptkit import checkpoint
from gptkit.config import load_config
from gptkit.errors import GptkitError
from gptkit.testing import write_tiny_pretrain

pytestmark = pytest.mark.slow  # a real run of minutes: `python -m pytest -m slow` (CI runs it)

# gptkit.testing's tiny pretraining run (tiny.toml), without dropout, 20 steps, a checkpoint at 10
PRETRAIN = [
    "run.threads=1", "model.drop_rate=0.0", "train.epochs=100", "train.max_steps=20", "train.eval_every=5",
    "train.checkpoint_every=10", "train.keep_checkpoints=5",
]

INSTRUCT = """
[run]
name = "tiny-dist-instruct"
recipe = "instruct"
seed = 7
device = "cpu"
threads = 1
[model]
vocab_size = 257
context_length = 64
emb_dim = 16
n_heads = 2
n_layers = 2
drop_rate = 0.0
[data]
tokenizer = { name = "bytes" }
dataset = { name = "synthetic-tasks", count = 120, word_length = [3, 7] }
prompt = { name = "compact" }
collator = { name = "masked-response", mask_prompt = true }
split = [0.8, 0.1, 0.1]
[train]
epochs = 100
max_steps = 20
batch_size = 8
grad_accum = 2
lr = 3e-3
eval_every = 5
eval_batches = 2
save_best = false
precision = "fp32"
[generate]
sampler = { name = "greedy" }
max_new_tokens = 6
[eval]
max_new_tokens = 6
batch_size = 6
scorers = [{ name = "exact-match" }]
"""

TOLERANCE = 1e-5  # fp32: the processes sum the same per-token losses in another order


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    write_tiny_pretrain(folder)
    (folder / "instruct.toml").write_text(INSTRUCT, encoding="utf-8")
    return folder


def two_processes(folder: Path, experiment: str, *overrides: str, launcher: str = "gptkit") -> subprocess.CompletedProcess:
    """`gptkit run --nproc 2 ...`, or the same under torchrun itself (`launcher="torchrun"`)."""
    if launcher == "gptkit":
        command = [sys.executable, "-m", "gptkit", "run", "--nproc", "2", experiment, *overrides]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "gptkit", "run", experiment, *overrides]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_process(folder: Path, experiment: str, *overrides: str) -> dict:
    return gptkit.run(load_config(folder / experiment, list(overrides)))


def rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl by step; a step logged twice would be an error."""
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in logged}) == len(logged), "one row per step"
    return {r["step"]: r for r in logged}


def assert_same_course(reference: Path, other: Path, steps: range, padded: bool = False) -> None:
    """Same losses at every step; same tokens_seen unless batches are padded (each process pads its
    share to its own longest example, and tokens_seen counts the inputs computed)."""
    want, got = rows(reference), rows(other)
    assert sorted(got) == list(steps)
    for step in steps:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], abs=TOLERANCE), step
        assert padded or got[step]["tokens_seen"] == want[step]["tokens_seen"]
        for key in ("train_loss", "val_loss"):
            assert (key in got[step]) == (key in want[step])
            if key in want[step]:
                assert got[step][key] == pytest.approx(want[step][key], abs=TOLERANCE), (step, key)


@pytest.fixture(scope="module")
def pretrain_runs(folder) -> dict[str, Path]:
    """The tiny pretraining run on 1 process, on 2 with ddp (gptkit run --nproc) and on 2 with fsdp
    and activation checkpointing (torchrun), which recomputes the same activations."""
    runs = {name: folder / f"pretrain-{name}" for name in ("single", "ddp", "fsdp")}
    one_process(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={runs['single']}")
    two_processes(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={runs['ddp']}")
    two_processes(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={runs['fsdp']}", "train.strategy=fsdp", "train.activation_checkpointing=true", launcher="torchrun")
    return runs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_one_process_pretraining(pretrain_runs, strategy):
    run = pretrain_runs[strategy]
    assert_same_course(pretrain_runs["single"], run, range(1, 21))
    provenance = tomllib.loads((run / "config.toml").read_text())["provenance"]
    assert provenance["world_size"] == 2 and provenance["strategy"] == strategy
    assert (run / "samples.txt").read_text().count("Every effort moves you") == 2  # rank 0 alone writes: once per epoch end
    assert (run / "loss.png").is_file()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_of_two_processes_is_a_plain_model_folder(pretrain_runs, strategy):
    """Consolidated full weights, equal to the 1-process run's at the same step."""
    saved = pretrain_runs[strategy] / "checkpoints" / "step-000010"
    want = load_file(pretrain_runs["single"] / "checkpoints" / "step-000010" / "model.safetensors")
    got = load_file(saved / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=TOLERANCE, rtol=0)
    model, tokenizer = gptkit.load_model(saved)
    assert tokenizer.name == "bytes" and model.config.n_layers == 2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_of_two_processes_resumes_on_one(pretrain_runs, folder, strategy):
    resumed = folder / f"resumed-{strategy}-on-1"
    one_process(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={resumed}", f"run.resume={pretrain_runs[strategy] / 'checkpoints' / 'step-000010'}")
    assert_same_course(pretrain_runs["single"], resumed, range(11, 21))


def test_checkpoint_of_two_processes_resumes_on_two_with_another_strategy(pretrain_runs, folder):
    resumed = folder / "resumed-ddp-on-2-fsdp"
    checkpoint = pretrain_runs["ddp"] / "checkpoints" / "step-000010"
    two_processes(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={resumed}", f"run.resume={checkpoint}", "train.strategy=fsdp")
    assert_same_course(pretrain_runs["single"], resumed, range(11, 21))


@pytest.fixture(scope="module")
def instruct_runs(folder) -> dict[str, Path]:
    runs = {name: folder / f"instruct-{name}" for name in ("single", "ddp", "fsdp")}
    one_process(folder, "instruct.toml", f"run.out_dir={runs['single']}")
    for strategy in ("ddp", "fsdp"):
        two_processes(folder, "instruct.toml", f"run.out_dir={runs[strategy]}", f"train.strategy={strategy}")
    return runs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_one_process_on_masked_targets(instruct_runs, strategy):
    """The masked-response collator gives each example its own number of targets: the loss is
    weighted by tokens over the whole global batch, not a mean of the ranks' or micro-batches'
    means. Each process splits its share in 2 micro-batches, synchronising gradients after the last."""
    assert_same_course(instruct_runs["single"], instruct_runs[strategy], range(1, 21), padded=True)
    responses = json.loads((instruct_runs[strategy] / "responses.json").read_text())
    assert responses == json.loads((instruct_runs["single"] / "responses.json").read_text())
    assert (instruct_runs[strategy] / "scores.json").is_file()


def worker_of_rank(launcher: int, rank: int) -> int | None:
    """The pid of the process of `rank` that the launcher process `launcher` started, if running."""
    children = [int(pid) for task in Path(f"/proc/{launcher}/task").iterdir() for pid in (task / "children").read_text().split()]
    for pid in children:
        try:
            if f"RANK={rank}".encode() in (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes in /proc (Linux)")
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(folder):
    """A stop is agreed: SIGTERM to rank 1 alone stops both ranks after the same step; they save one
    checkpoint together, and the launcher exits 143, saying so once."""
    out = folder / "stopped"
    command = [sys.executable, "-m", "gptkit", "run", "--nproc", "2", "tiny.toml", *PRETRAIN, "train.max_steps=100000", f"run.out_dir={out}"]
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
            time.sleep(0.2)
        rank1 = worker_of_rank(proc.pid, 1)
        assert rank1 is not None, "rank 1 is running"
        os.kill(rank1, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    last = max(rows(out))
    assert checkpoint.step_checkpoints(out)[-1].name == f"step-{last:06d}" and last < 100000
    assert err.count(f"interrupted at step {last}") == 1


def test_odd_global_batch_fails_naming_train_batch_size(folder):
    done = subprocess.run(
        [sys.executable, "-m", "gptkit", "run", "--nproc", "2", "tiny.toml", *PRETRAIN, "train.batch_size=5", f"run.out_dir={folder / 'odd'}"],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "train.batch_size = 5" in done.stderr, done.stderr
    assert not (folder / "odd").exists()


def test_fsdp_needs_processes_started_by_torchrun(folder):
    with pytest.raises(GptkitError, match=r"train.strategy = \"fsdp\" needs processes started by torchrun"):
        one_process(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={folder / 'alone'}", "train.strategy=fsdp")


def test_cpu_offload_needs_fsdp_on_cuda(folder):
    with pytest.raises(GptkitError, match=r"train.cpu_offload = true .* needs train.strategy = \"fsdp\" on CUDA"):
        one_process(folder, "tiny.toml", *PRETRAIN, f"run.out_dir={folder / 'offload'}", "train.cpu_offload=true")
