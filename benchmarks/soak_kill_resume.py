"""Soak: SIGKILL a training run at random moments, resume it with run.resume=auto, and check that
nothing is lost or silently wrong.

A trial trains a small GPT (byte tokenizer, a checkpoint after every step, so kills land in steps,
evaluations and checkpoint writes alike). Each round starts `gptkit run ... run.resume=auto` and
kills it with SIGKILL a random moment after it starts writing; the last round runs to the end. The
finished run must equal one that never stopped, bit for bit: the final weights and optimizer state,
and every metrics row but its timing (tokens_per_s). Each kill's litter (temp folders and files,
incomplete step folders) is counted, and must be gone once the run has finished; no metrics row may
be lost or duplicated.

    python benchmarks/soak_kill_resume.py --minutes 5 [--kills 8] [--window 1.0] [--seed 0]

prints a line per trial and a summary line:

    soak: 6 trials, 48 kills, 54 resumes, 6/6 finals identical, litter seen 17, left 0, rows lost or duplicated 0

tests/test_soak_kill_resume.py runs one short trial of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from gptkit.testing import write_tiny_pretrain

# gptkit.testing's tiny pretraining run, wider, with a checkpoint after every step
SETTINGS = [
    "run.name=soak", "run.seed=11", "run.threads=1", "model.emb_dim=48", "model.n_heads=4", "train.eval_every=4",
    "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.save_best=true", "generate.max_new_tokens=4",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def write_experiment(folder: Path) -> Path:
    return write_tiny_pretrain(folder, lines=40)


def command(experiment: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "gptkit", "run", str(experiment), *SETTINGS, f"run.out_dir={out_dir}", "run.resume=auto"]


def litter(run_dir: Path) -> list[Path]:
    """What a killed run leaves that a finished one must not: temp files and folders, incomplete step folders."""
    found = list(run_dir.glob(".*.tmp"))
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            complete = (path / "training_state.pt").is_file() and (path / "checksums.json").is_file()
            if path.name.startswith(".") or (path.name.startswith("step-") and not complete):
                found.append(path)
    return found


def final(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    """(weights, training state, metrics rows without timing) of a finished run's last checkpoint."""
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(last / "training_state.pt", weights_only=True)
    state.pop("config")  # holds run.out_dir, which differs between the runs compared
    return load_file(str(last / "model.safetensors")), state, [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def same(a, b) -> bool:
    """Bitwise equality of nested tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def kill_at_random(cmd: list[str], run_dir: Path, rng: random.Random, window: float) -> bool:
    """Start `cmd`, SIGKILL it `uniform(0, window)` seconds after it first writes metrics.jsonl;
    False if it finished first."""
    metrics = run_dir / "metrics.jsonl"
    started = time.time()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (metrics.exists() and metrics.stat().st_mtime > started):
        time.sleep(0.01)
    time.sleep(rng.uniform(0, window))
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def trial(folder: Path, kills: int, rng: random.Random, reference: tuple, window: float = 1.0) -> dict:
    """One run killed up to `kills` times, then finished; its figures (see the module docstring)."""
    experiment = write_experiment(folder)
    run_dir = folder / "run"
    cmd = command(experiment, run_dir)
    figures = {"kills": 0, "resumes": 0, "litter_seen": 0}
    finished = False
    while figures["kills"] < kills and not finished:
        finished = not kill_at_random(cmd, run_dir, rng, window)
        if not finished:
            figures["kills"] += 1
            figures["litter_seen"] += len(litter(run_dir))
    if not finished:
        run_to_end(cmd)
    figures["resumes"] = figures["kills"]  # every start after the first resumes (or restarts, killed before a checkpoint)
    weights, state, rows = final(run_dir)
    steps = [r["step"] for r in rows]
    figures["identical"] = same((weights, state, rows), reference)
    figures["litter_left"] = len(litter(run_dir))
    figures["bad_rows"] = len(steps) - len(set(steps)) + len(set(range(1, steps[-1] + 1)) - set(steps))
    return figures


def reference_run(folder: Path) -> tuple:
    """The finals of the run never stopped."""
    experiment = write_experiment(folder)
    run_to_end(command(experiment, folder / "run"))
    return final(folder / "run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="keep starting trials until this much time has passed")
    parser.add_argument("--kills", type=int, default=8, help="kills per trial")
    parser.add_argument("--window", type=float, default=1.0, help="seconds after a start begins writing within which it is killed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    total = {"trials": 0, "kills": 0, "resumes": 0, "identical": 0, "litter_seen": 0, "litter_left": 0, "bad_rows": 0}
    with tempfile.TemporaryDirectory(prefix="gptkit-soak-") as work:
        reference = reference_run(Path(work) / "reference")
        deadline = time.time() + 60 * args.minutes
        while time.time() < deadline:
            figures = trial(Path(work) / f"trial-{total['trials']}", args.kills, rng, reference, args.window)
            total["trials"] += 1
            for key in ("kills", "resumes", "identical", "litter_seen", "litter_left", "bad_rows"):
                total[key] += int(figures[key])
            print(f"trial {total['trials']}: {figures}", flush=True)
    print(
        f"soak: {total['trials']} trials, {total['kills']} kills, {total['resumes']} resumes, "
        f"{total['identical']}/{total['trials']} finals identical, litter seen {total['litter_seen']}, "
        f"left {total['litter_left']}, rows lost or duplicated {total['bad_rows']}"
    )
    sys.exit(0 if total["identical"] == total["trials"] and not total["litter_left"] and not total["bad_rows"] else 1)


if __name__ == "__main__":
    main()
