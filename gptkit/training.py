"""The training engine, shared by every recipe that trains (pretrain, instruct, ...).

A recipe sets the run up (`gptkit.runs.setup_run`: device, seed, run folder, tokenizer, model), builds
its own examples and collator with the run's context, and calls
`Trainer(run).fit(train_set, val_set, collator)`.
The engine owns the rest: the `[train] finetune` strategy, AdamW with weight-decay groups, the LR
schedule, gradient accumulation and clipping, mixed precision, evaluation, samples, metrics.jsonl,
loss.png, checkpoints, exact resume, Ctrl-C and SIGTERM, and the training-event hooks.

Semantics follow the original scripts (llms-from-scratch ch05 `train_model_simple`): one optimizer
step per `batch_size` examples, incomplete last batches dropped; evaluation after the first step and
every `eval_every` steps after it, as eval-mode means over `eval_batches` batches of each split; a
sample at each epoch end (and at the last step); `tokens_seen` counts input tokens. Resume is exact: the data order of an
epoch is a function of (seed, epoch), and the checkpoint holds the RNG and optimizer states.

The run folder is claimed (locked) before anything in it is read or written, then cleared of what a
killed run left; resume takes the newest intact checkpoint, after `Run.check_resume` has compared
its settings with the new ones. A file that cannot be written stops the run with an error naming it
and the last intact checkpoint. SIGINT or SIGTERM saves a checkpoint and raises RunInterrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from gptkit import checkpoint, plugins
from gptkit.config import to_raw
from gptkit.errors import GptkitError, RunInterrupted, WriteError
from gptkit.evaluation import lm_loss
from gptkit.files import append_text, atomic_write_text
from gptkit.generation import generate
from gptkit.interfaces import Batch, Example
from gptkit.plotting import plot_losses
from gptkit.plugins import registry
from gptkit.runs import Run
from gptkit.weights import load_state

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- building blocks ----------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas, device: torch.device) -> torch.optim.AdamW:
    """AdamW that decays matrices (weights, embeddings) but not biases and norm gains; fused on CPU and CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def lr_at(step: int, *, lr: float, schedule: str, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine to min_lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int, lengths: Sequence[int] | None = None, batch_size: int = 1) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch).

    With `lengths` (train.group_by_length), examples of similar length share a batch, so batches,
    padded to their longest, carry less padding: the permutation is cut into windows of 64 batches,
    each window sorted by length and cut into batches, and the full batches are shuffled (the
    megabatch scheme of transformers' LengthGroupedSampler). An incomplete last batch stays last,
    where the engine drops it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return order
    window = 64 * batch_size
    grouped = [i for start in range(0, n, window) for i in sorted(order[start : start + window], key=lambda i: -lengths[i])]
    batches = [grouped[start : start + batch_size] for start in range(0, n - n % batch_size, batch_size)]
    shuffled = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for batch in shuffled for i in batch] + grouped[n - n % batch_size :]


class MetricsLog:
    """metrics.jsonl: one JSON row per step, appended whole or not at all. On resume, rows after the
    checkpoint's step are dropped (see `read_metrics`)."""

    def __init__(self, path: Path, keep_through: int | None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_through is not None and path.is_file():
            self.rows = [r for r in read_metrics(path) if r["step"] <= keep_through]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict[str, Any]) -> None:
        append_text(self.path, json.dumps(row) + "\n")
        self.rows.append(row)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl. A last line with no newline after it is a write cut short (a
    kill, a full disk): it is dropped with a warning. Any other bad line is an error naming it."""
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise ValueError("a row is a JSON object with an integer step")
        except ValueError as exc:  # also bad UTF-8 and bad JSON
            if number == len(lines):
                warnings.warn(f"{path}: line {number}, the last, was cut short by an interrupted write; dropped it", plugins.GptkitWarning)
                break
            raise GptkitError(f"{path}: line {number} is not a metrics row ({exc}); correct or delete that line") from None
        rows.append(row)
    return rows


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (sent by schedulers, `wandb agent` and torchrun)
    ask the loop to stop after the current step and save; a second signal aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (a second one aborts)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, previous in self.previous.items():
            if previous is not None:
                signal.signal(s, previous)


# --- the engine ---------------------------------------------------------------------------------


class Trainer:
    """One training run of `run` (a gptkit.runs.Run, what the hooks receive as `run`)."""

    def __init__(self, run: Run):
        self.run = run
        self.config = run.config
        self.device = run.device
        self.out_dir = run.out_dir
        self.resume_from: Path | None = None
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.evals_since_best = 0
        self.best_weights: dict[str, torch.Tensor] | None = None  # not yet written to checkpoints/best

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def step(self) -> int:
        return self.run.step

    # -- pieces of a step --

    def batch(self, examples: list[Example]) -> Batch:
        """The collated batch on the device. A collator may also return a plain (inputs, targets)
        pair, whose ignore index is the default -100."""
        batch = self.collator(examples)
        if not isinstance(batch, Batch):
            batch = Batch(*batch)
        return Batch(batch.inputs.to(self.device, non_blocking=True), batch.targets.to(self.device, non_blocking=True), batch.ignore_index)

    def loss(self, batch: Batch) -> torch.Tensor:
        with self.autocast():
            return lm_loss(self.forward(batch.inputs), batch.targets, batch.ignore_index)

    def train_step(self, examples: list[Example]) -> tuple[float, int]:
        """One optimizer step over `examples` in `grad_accum` micro-batches; (mean loss, input tokens)."""
        t = self.config.train
        self.forward.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        micro = math.ceil(len(examples) / t.grad_accum)
        loss_sum, tokens = 0.0, 0
        for i in range(0, len(examples), micro):
            batch = self.batch(examples[i : i + micro])
            loss = self.loss(batch) / t.grad_accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.item()
            tokens += batch.inputs.numel()
        if not math.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            last = checkpoint.step_checkpoints(self.out_dir)
            raise GptkitError(
                f"training loss is {loss_sum} at step {self.step + 1}; stopped without saving "
                f"(last good checkpoint: {last[-1] if last else 'none'}). Try a lower train.lr, train.grad_clip, or precision fp32"
            )
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, tokens

    @torch.inference_mode()
    def mean_loss(self, examples: Sequence[Example], order: Sequence[int]) -> float:
        """Eval-mode mean of the batch losses over the first `eval_batches` (micro-)batches (NaN when empty)."""
        bs = self.config.train.batch_size // self.config.train.grad_accum
        starts = range(0, len(order), bs)[: self.config.train.eval_batches]
        self.forward.eval()
        losses = [self.loss(self.batch([examples[i] for i in order[s : s + bs]])).item() for s in starts]
        self.forward.train()
        return sum(losses) / len(losses) if losses else math.nan

    def evaluate(self) -> dict[str, float]:
        return {
            "train_loss": self.mean_loss(self.train_set, self.train_eval_order),
            "val_loss": self.mean_loss(self.val_set, range(len(self.val_set))),
        }

    def sample(self) -> str:
        """A sample from `[generate] prompt` with `[generate] sampler`, seeded by step (the training RNG is untouched)."""
        g = self.config.generate
        completion = generate(
            self.model,
            self.run.tokenizer,
            g.prompt,
            max_new_tokens=g.max_new_tokens,
            sampler=self.sampler,
            seed=self.config.run.seed + self.step,
            ignore_eos=g.ignore_eos,
        )
        return g.prompt + completion

    # -- checkpoints --

    def state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "steps_per_epoch": self.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda},
            "best_val_loss": self.best_val_loss,
            "evals_since_best": self.evals_since_best,
            "finetune": self.finetune.trained_state(self.model),
            "config": to_raw(self.run.config),  # what Run.check_resume compares on resume
        }

    def model_files(self) -> dict[str, Any]:
        """What a saved model folder of this run holds beyond the training state (see checkpoint.save_model)."""
        return {
            "weights": self.finetune.saved_weights(self.model),
            "prompt": self.config.data.prompt,
            "extra_files": lambda folder: self.finetune.save_files(self.model, folder),
        }

    def save_checkpoint(self) -> Path:
        previous = checkpoint.step_checkpoints(self.out_dir)
        try:
            self.write_best()
            path = checkpoint.save_checkpoint(
                self.out_dir, self.step, self.model, self.run.tokenizer, self.state(), self.config.train.keep_checkpoints, **self.model_files()
            )
        except WriteError as exc:
            kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            raise GptkitError(f"could not save the checkpoint of step {self.step}: {exc}; {kept}") from None
        plugins.hook().on_checkpoint(run=self.run, step=self.step, path=path)
        return path

    def resume(self, total_steps: int) -> bool:
        """Load the checkpoint `run.resume` names, or the newest intact one of those it names, and
        say in one line what happened; False when the run has nothing left to train."""
        resume = self.config.run.resume
        if resume == "none" and checkpoint.step_checkpoints(self.out_dir):
            raise GptkitError(
                f"{self.out_dir} holds checkpoints of an earlier run; continue it with run.resume=auto, "
                "or start anew in another run.out_dir (or delete that folder)"
            )
        candidates = checkpoint.resume_candidates(resume, self.out_dir)
        if not candidates:
            if resume == "auto":
                tqdm.write(f"run.resume=auto: no checkpoint in {self.out_dir} to resume from; starting at step 0")
            return True
        self.resume_from, changes = checkpoint.first_intact(candidates, self.load_checkpoint)
        if self.step >= total_steps:
            tqdm.write(f"run.resume: {self.out_dir} finished at step {self.step}; nothing left to train (raise train.max_steps or train.epochs to go on)")
            return False
        tqdm.write(f"resumed from {self.resume_from} (step {self.step})" + "".join(f"\n  changed: {c}" for c in changes))
        return True

    def load_checkpoint(self, path: Path) -> list[str]:
        """Resume from `path`: its files are checked (CorruptCheckpoint) and its settings compared
        (`Run.check_resume`) before the model and optimizer take its state. Returns the changed settings."""
        state = checkpoint.load_training_state(path)
        changes = self.run.check_resume(
            path, state["step"], state.get("config"), {"steps per epoch (the data or train.batch_size)": (state["steps_per_epoch"], self.steps_per_epoch)}
        )
        if state.get("finetune") is None:
            load_state(self.model, checkpoint.load_model_files(path, self.run.ctx).state_dict, path)
        else:
            self.finetune.load_trained_state(self.model, state["finetune"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.run.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val_loss, self.evals_since_best = state["best_val_loss"], state["evals_since_best"]
        return changes

    def intact(self) -> str:
        """What a failed write leaves to go on from."""
        last = checkpoint.step_checkpoints(self.out_dir)
        if not last:
            return "no checkpoint of this run was saved yet"
        return f"the last checkpoint {last[-1]} is intact; resume with: {self.run.resume_command(last[-1])}"

    def note_eval(self, val_loss: float) -> None:
        """Track the best val_loss and count evaluations without improvement. The best weights are
        kept in (CPU) memory and written as checkpoints/best with the next checkpoint, so a run whose
        loss keeps improving does not write a full model at every evaluation."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.evals_since_best = val_loss, 0
            if self.config.train.save_best:
                self.best_weights = {k: v.to("cpu", copy=True) for k, v in self.finetune.saved_weights(self.model).items()}
        else:
            self.evals_since_best += 1

    def write_best(self) -> None:
        if self.best_weights is not None:
            best = self.out_dir / checkpoint.CHECKPOINTS / checkpoint.BEST
            checkpoint.save_model(best, self.model, self.run.tokenizer, weights=self.best_weights, prompt=self.config.data.prompt)
            self.best_weights = None

    # -- the loop --

    def fit(
        self,
        train_set: Sequence[Example],
        val_set: Sequence[Example],
        collator: Callable[[list[Example]], Batch],
        sample: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Train on `train_set`, evaluate on `val_set`; returns the last metrics row. A file that
        cannot be written stops the run: the error names it and the last intact checkpoint."""
        try:
            return self.train(train_set, val_set, collator, sample)
        except WriteError as exc:
            raise WriteError(exc.path, f"{exc.reason}; {self.intact()}") from exc

    def train(self, train_set, val_set, collator, sample) -> dict[str, Any]:
        """`fit`, less its last word on write failures."""
        run, config, t = self.run, self.config, self.config.train
        self.train_set, self.val_set, self.collator = train_set, val_set, collator
        self.steps_per_epoch = len(train_set) // t.batch_size
        if self.steps_per_epoch == 0:
            raise GptkitError(f"the training split has {len(train_set)} examples, fewer than train.batch_size = {t.batch_size}")
        total_steps = t.epochs * self.steps_per_epoch
        total_steps = min(total_steps, t.max_steps) if t.max_steps else total_steps
        self.train_eval_order = epoch_order(len(train_set), config.run.seed, -1)
        lengths = [len(example.input_ids) for example in train_set] if t.group_by_length else None
        self.finetune = registry.finetune.build(t.finetune, run.ctx)
        self.finetune.prepare(run.model)
        self.optimizer = build_optimizer(run.model, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas, device=self.device)
        dtype = AUTOCAST_DTYPES[run.precision]
        self.autocast = lambda: torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.forward = torch.compile(run.model) if t.compile else run.model
        self.sampler = registry.sampler.build(config.generate.sampler, run.ctx)
        sample = sample or self.sample
        run.claim_folder()
        cleared = checkpoint.clean_run_folder(self.out_dir)
        if cleared:
            tqdm.write(f"cleared what an interrupted run left in {self.out_dir}: {', '.join(p.name for p in cleared)}")
        if not self.resume(total_steps):
            rows = [r for r in read_metrics(self.out_dir / "metrics.jsonl") if r["step"] <= self.step]
            return rows[-1] if rows else {}
        run.write_config()
        metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.step if self.resume_from else None)
        samples_path = self.out_dir / "samples.txt"
        if not self.resume_from:
            samples_path.unlink(missing_ok=True)
        run.track()
        row: dict[str, Any] = metrics.rows[-1] if metrics.rows else {}
        try:
            plugins.hook().on_train_start(run=run)
            with StopRequest() as stop, tqdm(total=total_steps, initial=self.step, desc=config.run.name, unit="step") as bar:
                order: list[int] = []
                while self.step < total_steps:
                    epoch, position = divmod(self.step, self.steps_per_epoch)
                    if position == 0 or not order:
                        order = epoch_order(len(train_set), config.run.seed, epoch, lengths, t.batch_size)
                    self.lr = lr_at(self.step, lr=t.lr, schedule=t.lr_schedule, warmup_steps=t.warmup_steps, total_steps=total_steps, min_lr=t.min_lr)
                    started = time.perf_counter()
                    ids = order[position * t.batch_size : (position + 1) * t.batch_size]
                    loss, tokens = self.train_step([train_set[i] for i in ids])
                    seconds = time.perf_counter() - started
                    run.step += 1
                    self.tokens_seen += tokens
                    row = {
                        "step": self.step,
                        "epoch": self.step / self.steps_per_epoch,
                        "tokens_seen": self.tokens_seen,
                        "lr": self.lr,
                        "loss": loss,
                        "tokens_per_s": tokens / seconds,
                    }
                    evaluating = (t.eval_every and (self.step - 1) % t.eval_every == 0) or self.step == total_steps
                    if evaluating:
                        row.update(self.evaluate())
                        tqdm.write(
                            f"Ep {epoch + 1} (Step {self.step:06d}): Train loss {row['train_loss']:.3f}, Val loss {row['val_loss']:.3f}"
                        )
                    metrics.write(row)
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    plugins.hook().on_step_end(run=run, step=self.step, metrics=row)
                    if evaluating:
                        plugins.hook().on_eval(run=run, step=self.step, metrics=row)
                        self.note_eval(row["val_loss"])
                    if self.step % self.steps_per_epoch == 0 or self.step == total_steps:
                        text = sample()
                        tqdm.write(text.replace("\n", " "))
                        append_text(samples_path, f"epoch {epoch + 1}, step {self.step}:\n{text}\n\n")
                        plugins.hook().on_sample(run=run, step=self.step, text=text)
                    patience_over = t.early_stopping_patience and self.evals_since_best >= t.early_stopping_patience
                    if patience_over:
                        tqdm.write(f"early stopping: no better val_loss in {self.evals_since_best} evaluations")
                    if stop.requested or patience_over or self.step == total_steps or (t.checkpoint_every and self.step % t.checkpoint_every == 0):
                        path = self.save_checkpoint()
                    if stop.requested or patience_over:
                        break
            plot_losses(metrics.rows, self.out_dir / "loss.png")
            plugins.hook().on_train_end(run=run, metrics=row)
            if stop.requested:  # raised once the progress bar is closed, so its message gets lines of its own
                raise RunInterrupted(checkpoint=path, step=self.step, signal=stop.signal, metrics=row, resume_command=run.resume_command(path))
        except BaseException as error:  # a NaN loss, a bug, a second Ctrl-C, an interruption: the trackers hear of it
            plugins.hook().on_train_error(run=run, error=error)
            raise
        return row
