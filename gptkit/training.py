"""The training engine, shared by every recipe that trains (pretrain, instruct, ...).

A recipe sets the run up (`gptkit.runs.setup_run`: device, seed, run folder, tokenizer, model), builds
its own examples and collator with the run's context, and calls
`Trainer(run).fit(train_set, val_set, collator)`.
The engine owns the rest: the `[train] finetune` strategy, AdamW with weight-decay groups, the LR
schedule, gradient accumulation and clipping, mixed precision, evaluation, samples, metrics.jsonl,
loss.png, checkpoints, exact resume, Ctrl-C and SIGTERM, and the training-event hooks. What `fit`
builds once lives in `Parts`, where the run stands in `Progress`; both travel as arguments.

Under torchrun the same loop runs in every process (gptkit.distributed: ddp or fsdp). `batch_size`
stays the global batch, each rank taking its share; a step's loss is the sum of per-token losses
over the target count of the whole global batch (all-reduced), so N processes follow one. Rank 0
alone writes and calls the hooks; every rank joins evaluation, samples and checkpoint gathering;
a stop (a signal to any rank, early stopping) is agreed by all.

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

import attrs
import torch
from tqdm import tqdm

from gptkit import checkpoint, distributed, plugins
from gptkit.config import to_raw
from gptkit.errors import GptkitError, RunInterrupted, WriteError
from gptkit.evaluation import summed_lm_loss
from gptkit.files import append_text, atomic_write_text
from gptkit.json_errors import json_reason
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
    checkpoint's step are dropped (see `read_metrics`). With `write` False (ranks other than 0) the
    rows are kept in memory only."""

    def __init__(self, path: Path, keep_through: int | None, write: bool = True):
        self.path = path
        self.writes = write
        self.rows: list[dict[str, Any]] = []
        if keep_through is not None and path.is_file():
            self.rows = [r for r in read_metrics(path) if r["step"] <= keep_through]
        if write:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict[str, Any]) -> None:
        if self.writes:
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
            why = f"malformed JSON at column {exc.colno}: {json_reason(exc)}" if isinstance(exc, json.JSONDecodeError) else exc
            raise GptkitError(f"{path}: line {number} is not a metrics row ({why}); correct or delete that line") from None
        rows.append(row)
    return rows


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (sent by schedulers, `wandb agent` and torchrun)
    ask the loop to stop after the current step and save; a second signal aborts at once, unless
    `abort_on_second` is False: with several processes, where torchrun's agent passes on the signal
    it gets and a scheduler may signal the workers as well (the agent's SIGKILL after its grace
    period is the hard stop there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, abort_on_second: bool = True) -> None:
        self.signal: int | None = None
        self.abort_on_second = abort_on_second
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
            if self.abort_on_second:
                raise KeyboardInterrupt
            return
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (a second one aborts)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, previous in self.previous.items():
            if previous is not None:
                signal.signal(s, previous)


# --- the engine ---------------------------------------------------------------------------------


@attrs.define
class Parts:
    """What `fit` builds once and every step uses; read, never replaced, while the run trains.

    The model that trains is `run.model` (what generation, the hooks and saved folders see);
    `forward` is the module that computes the training loss: run.model under `run.strategy` (a
    DistributedDataParallel wrapper for ddp; for fsdp, run.model itself, sharded in place), compiled
    with train.compile."""

    forward: torch.nn.Module
    lm_loss: Callable[..., torch.Tensor]  # summed_lm_loss, compiled with train.compile
    finetune: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    collator: Callable[[list[Example]], Batch]
    sampler: Any
    train_set: Sequence[Example]
    val_set: Sequence[Example]
    train_eval_order: list[int]
    steps_per_epoch: int
    total_steps: int


@attrs.define
class Progress:
    """Where the run stands beyond `run.step`: saved in checkpoints and restored on resume."""

    tokens_seen: int = 0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # not yet written to checkpoints/best
    resumed_from: Path | None = None


def target_count(batch: Batch) -> int:
    """How many targets of `batch` take a loss (those not equal to its ignore index)."""
    return int((batch.targets != batch.ignore_index).sum())


class Trainer:
    """One training run of `run` (a gptkit.runs.Run, what the hooks receive as `run`).

    With several processes every rank runs this same loop on its share of each batch; rank 0 alone
    writes files, prints and calls the hooks, and every rank joins the forwards rank 0 needs
    (evaluation, samples) and the gathering of full weights for checkpoints."""

    def __init__(self, run: Run):
        self.run = run

    def say(self, text: str) -> None:
        if self.run.is_main:
            tqdm.write(text)

    # -- pieces of a step --

    def batch(self, parts: Parts, examples: list[Example]) -> Batch:
        """The collated batch on the device. A collator may also return a plain (inputs, targets)
        pair, whose ignore index is the default -100."""
        batch = parts.collator(examples)
        if not isinstance(batch, Batch):
            batch = Batch(*batch)
        return Batch(self.to_device(batch.inputs), self.to_device(batch.targets), batch.ignore_index)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """To CUDA from pinned memory, so that the copy runs beside the GPU's work rather than before it."""
        if self.run.device.type == "cuda":
            return tensor.pin_memory().to(self.run.device, non_blocking=True)
        return tensor.to(self.run.device)

    def summed_loss(self, parts: Parts, batch: Batch) -> torch.Tensor:
        """The sum of the per-token losses of `batch` (see `target_count` for what it is divided by)."""
        dtype = parts.autocast_dtype
        with torch.autocast(self.run.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = parts.forward(batch.inputs)
        return parts.lm_loss(logits, batch.targets, batch.ignore_index)

    def my_share(self, items: Sequence[int]) -> list[int]:
        """This rank's contiguous share of `items` (a batch's example ids), as even as it can be."""
        n, world, rank = len(items), self.run.world_size, self.run.rank
        start, end = rank * n // world, (rank + 1) * n // world
        return list(items[start:end])

    def train_step(self, parts: Parts, examples: list[Example], lr: float) -> tuple[float, int]:
        """One optimizer step over this rank's `examples` in `grad_accum` micro-batches; returns
        (loss of the global batch, input tokens of the global batch).

        The loss is the sum of the per-token losses over every rank and micro-batch divided by the
        number of targets they hold together, however the batch is split: each micro-batch adds
        its summed loss times world_size / targets, since DDP and FSDP average gradients over ranks."""
        t = self.run.config.train
        parts.forward.train()
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        micro = math.ceil(len(examples) / t.grad_accum)
        batches = [self.batch(parts, examples[i : i + micro]) for i in range(0, len(examples), micro)]
        targets, tokens = distributed.all_sum([sum(map(target_count, batches)), sum(b.inputs.numel() for b in batches)], self.run.device)
        scale = self.run.world_size / targets if targets else math.nan  # no target at all: NaN, as a mean over none
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            with self.gradient_sync(parts, last=i == len(batches) - 1):
                loss = self.summed_loss(parts, batch)
                parts.scaler.scale(loss * scale).backward()
            loss_sum += loss.item()
        (loss_sum,) = distributed.all_sum([loss_sum], self.run.device)
        loss = loss_sum / targets if targets else math.nan
        if not math.isfinite(loss):
            parts.optimizer.zero_grad(set_to_none=True)
            last = checkpoint.step_checkpoints(self.run.out_dir)
            raise GptkitError(
                f"training loss is {loss} at step {self.run.step + 1}; stopped without saving "
                f"(last good checkpoint: {last[-1] if last else 'none'}). Try a lower train.lr, train.grad_clip, or precision fp32"
            )
        if t.grad_clip > 0:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(self.run.model.parameters(), t.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.optimizer.zero_grad(set_to_none=True)
        return loss, int(tokens)

    def gradient_sync(self, parts: Parts, *, last: bool):
        """Gradients are averaged over ranks once per step, after the last micro-batch."""
        if self.run.strategy == "ddp" and not last:
            return parts.forward.no_sync()
        if self.run.strategy == "fsdp":
            self.run.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    @torch.no_grad()  # not inference_mode: FSDP reuses the buffers it gathers parameters into
    def mean_loss(self, parts: Parts, examples: Sequence[Example], order: Sequence[int]) -> float:
        """Eval-mode mean of the batch losses over the first `eval_batches` (micro-)batches (NaN
        when empty); each batch's loss is token-weighted over its examples on every rank."""
        bs = self.run.config.train.batch_size // self.run.config.train.grad_accum
        starts = range(0, len(order), bs)[: self.run.config.train.eval_batches]
        parts.forward.eval()
        losses = []
        for s in starts:
            ids = order[s : s + bs]
            mine = self.my_share(ids)
            weight = 1.0 if mine else 0.0  # a rank with no example of a short last batch still joins the forward
            batch = self.batch(parts, [examples[i] for i in mine or ids[:1]])
            total, count = distributed.all_sum([weight * self.summed_loss(parts, batch).item(), weight * target_count(batch)], self.run.device)
            losses.append(total / count if count else math.nan)
        parts.forward.train()
        return sum(losses) / len(losses) if losses else math.nan

    def evaluate(self, parts: Parts) -> dict[str, float]:
        return {
            "train_loss": self.mean_loss(parts, parts.train_set, parts.train_eval_order),
            "val_loss": self.mean_loss(parts, parts.val_set, range(len(parts.val_set))),
        }

    def sample(self, parts: Parts) -> str:
        """A sample from `[generate] prompt` with `[generate] sampler`, seeded by step (the training RNG is untouched)."""
        g = self.run.config.generate
        completion = generate(
            self.run.model,
            self.run.tokenizer,
            g.prompt,
            max_new_tokens=g.max_new_tokens,
            sampler=parts.sampler,
            seed=self.run.config.run.seed + self.run.step,
            ignore_eos=g.ignore_eos,
        )
        return g.prompt + completion

    # -- checkpoints --

    def saved_weights(self, parts: Parts) -> dict[str, torch.Tensor]:
        """The full weights a saved model folder holds, on rank 0 (empty elsewhere); under fsdp
        every rank takes part in gathering them."""
        if self.run.strategy == "fsdp":
            full = distributed.full_model_state(self.run.model)
            return checkpoint.canonical_weights(full, self.run.model.config) if self.run.is_main else {}
        return parts.finetune.saved_weights(self.run.model) if self.run.is_main else {}

    def state(self, parts: Parts, progress: Progress) -> dict[str, Any]:
        """The training state of a checkpoint (every rank takes part): the optimizer's state whole,
        keyed by parameter names, and each rank's RNG states, so that it resumes on any number of processes."""
        cuda = torch.cuda.get_rng_state_all() if self.run.device.type == "cuda" else []
        rngs = distributed.gather_objects({"torch": torch.get_rng_state(), "cuda": cuda})
        return {
            "step": self.run.step,
            "tokens_seen": progress.tokens_seen,
            "steps_per_epoch": parts.steps_per_epoch,
            "optimizer": distributed.full_optimizer_state(self.run.model, parts.optimizer),
            "scaler": parts.scaler.state_dict(),
            "rng": rngs,  # by rank
            "world_size": self.run.world_size,
            "best_val_loss": progress.best_val_loss,
            "evals_since_best": progress.evals_since_best,
            "finetune": parts.finetune.trained_state(self.run.model),
            "config": to_raw(self.run.config),  # what Run.check_resume compares on resume
        }

    def save_checkpoint(self, parts: Parts, progress: Progress) -> Path:
        """Write checkpoints/step-N: every rank gathers, rank 0 writes, and all learn whether it worked."""
        run = self.run
        state, weights = self.state(parts, progress), self.saved_weights(parts)
        path, failure = checkpoint.step_dir(run.out_dir, run.step), None
        if run.is_main:
            previous = checkpoint.step_checkpoints(run.out_dir)
            try:
                self.write_best(parts, progress)
                checkpoint.save_checkpoint(
                    run.out_dir, run.step, run.model, run.tokenizer, state, run.config.train.keep_checkpoints,
                    weights=weights, prompt=run.config.data.prompt, extra_files=lambda folder: parts.finetune.save_files(run.model, folder),
                )
            except WriteError as exc:
                kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
                failure = f"could not save the checkpoint of step {run.step}: {exc}; {kept}"
        failure = distributed.broadcast_object(failure)
        if failure:
            raise GptkitError(failure if run.is_main else f"rank 0 {failure}")
        run.hooks().on_checkpoint(run=run, step=run.step, path=path)
        return path

    def resume(self, parts: Parts, progress: Progress) -> bool:
        """Load the checkpoint `run.resume` names, or the newest intact one of those it names, and
        say in one line what happened; False when the run has nothing left to train."""
        resume, out_dir = self.run.config.run.resume, self.run.out_dir
        if resume == "none" and checkpoint.step_checkpoints(out_dir):
            raise GptkitError(
                f"{out_dir} holds checkpoints of an earlier run; continue it with run.resume=auto, "
                "or start anew in another run.out_dir (or delete that folder)"
            )
        candidates = checkpoint.resume_candidates(resume, out_dir)
        if not candidates:
            if resume == "auto":
                self.say(f"run.resume=auto: no checkpoint in {out_dir} to resume from; starting at step 0")
            return True
        progress.resumed_from, changes = checkpoint.first_intact(candidates, lambda path: self.load_checkpoint(parts, progress, path))
        if self.run.step >= parts.total_steps:
            self.say(f"run.resume: {out_dir} finished at step {self.run.step}; nothing left to train (raise train.max_steps or train.epochs to go on)")
            return False
        self.say(f"resumed from {progress.resumed_from} (step {self.run.step})" + "".join(f"\n  changed: {c}" for c in changes))
        return True

    def load_checkpoint(self, parts: Parts, progress: Progress, path: Path) -> list[str]:
        """Resume from `path`: its files are checked (CorruptCheckpoint) and its settings compared
        (`Run.check_resume`) before the model and optimizer take its state. Returns the changed
        settings. A checkpoint of N processes resumes on M: weights and optimizer state are whole;
        rank r takes the RNG states rank r saved (a rank the checkpoint had not keeps its own seed)."""
        run = self.run
        state = checkpoint.load_training_state(path)
        changes = run.check_resume(
            path, state["step"], state.get("config"), {"steps per epoch (the data or train.batch_size)": (state["steps_per_epoch"], parts.steps_per_epoch)}
        )
        if state.get("finetune") is None:
            weights = checkpoint.load_model_files(path, run.ctx).state_dict
            if self.run.strategy == "fsdp":
                distributed.load_full_model_state(run.model, weights)
            else:
                load_state(run.model, weights, path)
        else:
            parts.finetune.load_trained_state(run.model, state["finetune"])
        if "world_size" in state:
            distributed.load_full_optimizer_state(run.model, parts.optimizer, state["optimizer"])
        else:  # written by gptkit before distributed training: one process, the optimizer's state by position
            if run.strategy == "fsdp":
                raise GptkitError(f"{path}: a checkpoint of an earlier gptkit resumes under train.strategy \"single\" or \"ddp\", not fsdp")
            parts.optimizer.load_state_dict(state["optimizer"])
            state["rng"] = [state["rng"]]
        parts.scaler.load_state_dict(state["scaler"])
        if run.rank < len(state["rng"]):
            rng = state["rng"][run.rank]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"]:
                torch.cuda.set_rng_state_all(rng["cuda"])
        run.step, progress.tokens_seen = state["step"], state["tokens_seen"]
        progress.best_val_loss, progress.evals_since_best = state["best_val_loss"], state["evals_since_best"]
        return changes

    def intact(self) -> str:
        """What a failed write leaves to go on from."""
        last = checkpoint.step_checkpoints(self.run.out_dir)
        if not last:
            return "no checkpoint of this run was saved yet"
        return f"the last checkpoint {last[-1]} is intact; resume with: {self.run.resume_command(last[-1])}"

    def note_eval(self, parts: Parts, progress: Progress, val_loss: float) -> None:
        """Track the best val_loss and count evaluations without improvement. The best weights are
        kept in (CPU) memory and written as checkpoints/best with the next checkpoint, so a run whose
        loss keeps improving does not write a full model at every evaluation."""
        if val_loss < progress.best_val_loss:
            progress.best_val_loss, progress.evals_since_best = val_loss, 0
            if self.run.config.train.save_best:
                progress.best_weights = {k: v.to("cpu", copy=True) for k, v in self.saved_weights(parts).items()}
        else:
            progress.evals_since_best += 1

    def write_best(self, parts: Parts, progress: Progress) -> None:
        if progress.best_weights is not None:
            best = self.run.out_dir / checkpoint.CHECKPOINTS / checkpoint.BEST
            checkpoint.save_model(best, self.run.model, self.run.tokenizer, weights=progress.best_weights, prompt=self.run.config.data.prompt)
            progress.best_weights = None

    # -- the loop --

    def fit(
        self,
        train_set: Sequence[Example],
        val_set: Sequence[Example],
        collator: Callable[[list[Example]], Batch],
        sample: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Train on `train_set`, evaluate on `val_set`; returns the last metrics row. A file that
        cannot be written stops the run: the error names it and the last intact checkpoint.
        `sample()` (default: `[generate] prompt`'s completion) runs on every rank."""
        try:
            parts = self.build(train_set, val_set, collator)
            return self.train(parts, Progress(), sample or (lambda: self.sample(parts)))
        except WriteError as exc:
            raise WriteError(exc.path, f"{exc.reason}; {self.intact()}") from exc

    def build(self, train_set, val_set, collator) -> Parts:
        """The finetune strategy, the model under the distribution strategy, and the optimizer built
        after wrapping (FSDP replaces the parameters by their shards)."""
        run, t = self.run, self.run.config.train
        distributed.check_batch(t.batch_size, t.grad_accum, run.world_size)
        steps_per_epoch = len(train_set) // t.batch_size
        if steps_per_epoch == 0:
            raise GptkitError(f"the training split has {len(train_set)} examples, fewer than train.batch_size = {t.batch_size}")
        total_steps = t.epochs * steps_per_epoch
        dtype = AUTOCAST_DTYPES[run.precision]
        if run.strategy == "fsdp" and dtype == torch.float16:
            raise GptkitError("train.precision = \"fp16\" needs a gradient scaler over shards, which gptkit's fsdp does not have; use bf16 (or ddp)")
        if t.cpu_offload and (run.strategy != "fsdp" or run.device.type != "cuda"):
            raise GptkitError(
                f"train.cpu_offload = true moves fsdp's shards from the GPUs to CPU memory, but this run has "
                f"train.strategy {run.strategy!r} on {run.device.type}; it needs train.strategy = \"fsdp\" on CUDA"
            )
        finetune = registry.finetune.build(t.finetune, run.ctx)
        finetune.prepare(run.model)
        if run.strategy == "fsdp" and finetune.trained_state(run.model) is not None:
            raise GptkitError(f"train.finetune = {t.finetune.name!r} keeps tensors of its own (adapters), which fsdp does not gather; use train.strategy = \"ddp\"")
        if t.activation_checkpointing:
            distributed.checkpoint_activations(run.model)
        wrapped = distributed.wrap(run.model, run.strategy, run.device, dtype, t.cpu_offload)
        return Parts(
            forward=torch.compile(wrapped) if t.compile else wrapped,
            # compiled, the loss's fp32 upcast and log-softmax fuse: no fp32 copy of the [B, T, vocab] logits
            lm_loss=torch.compile(summed_lm_loss) if t.compile else summed_lm_loss,
            finetune=finetune,
            optimizer=build_optimizer(run.model, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas, device=run.device),
            scaler=torch.amp.GradScaler(run.device.type, enabled=dtype == torch.float16),
            autocast_dtype=dtype,
            collator=collator,
            sampler=registry.sampler.build(run.config.generate.sampler, run.ctx),
            train_set=train_set,
            val_set=val_set,
            train_eval_order=epoch_order(len(train_set), run.config.run.seed, -1),
            steps_per_epoch=steps_per_epoch,
            total_steps=min(total_steps, t.max_steps) if t.max_steps else total_steps,
        )

    def train(self, parts: Parts, progress: Progress, sample: Callable[[], str]) -> dict[str, Any]:
        """`fit`, less its last word on write failures."""
        run, config, t = self.run, self.run.config, self.run.config.train
        train_set, out_dir, main = parts.train_set, run.out_dir, run.is_main
        lengths = [len(example.input_ids) for example in train_set] if t.group_by_length else None
        run.claim_folder()
        cleared = distributed.broadcast_object(checkpoint.clean_run_folder(out_dir) if main else None)  # before any rank reads it
        if cleared:
            self.say(f"cleared what an interrupted run left in {out_dir}: {', '.join(p.name for p in cleared)}")
        if not self.resume(parts, progress):
            rows = [r for r in read_metrics(out_dir / "metrics.jsonl") if r["step"] <= run.step]
            return rows[-1] if rows else {}
        run.write_config()
        metrics = MetricsLog(out_dir / "metrics.jsonl", run.step if progress.resumed_from else None, write=main)
        samples_path = out_dir / "samples.txt"
        if main and not progress.resumed_from:
            samples_path.unlink(missing_ok=True)
        run.track()
        row: dict[str, Any] = metrics.rows[-1] if metrics.rows else {}
        stopped = 0
        try:
            run.hooks().on_train_start(run=run)
            with StopRequest(abort_on_second=run.world_size == 1) as stop, tqdm(
                total=parts.total_steps, initial=run.step, desc=config.run.name, unit="step", disable=not main
            ) as bar:
                order: list[int] = []
                while run.step < parts.total_steps:
                    epoch, position = divmod(run.step, parts.steps_per_epoch)
                    if position == 0 or not order:
                        order = epoch_order(len(train_set), config.run.seed, epoch, lengths, t.batch_size)
                    lr = lr_at(run.step, lr=t.lr, schedule=t.lr_schedule, warmup_steps=t.warmup_steps, total_steps=parts.total_steps, min_lr=t.min_lr)
                    started = time.perf_counter()
                    ids = self.my_share(order[position * t.batch_size : (position + 1) * t.batch_size])
                    loss, tokens = self.train_step(parts, [train_set[i] for i in ids], lr)
                    seconds = time.perf_counter() - started
                    run.step += 1
                    progress.tokens_seen += tokens
                    row = {
                        "step": run.step,
                        "epoch": run.step / parts.steps_per_epoch,
                        "tokens_seen": progress.tokens_seen,
                        "lr": lr,
                        "loss": loss,
                        "tokens_per_s": tokens / seconds,
                    }
                    evaluating = (t.eval_every and (run.step - 1) % t.eval_every == 0) or run.step == parts.total_steps
                    if evaluating:
                        row.update(self.evaluate(parts))
                        self.say(f"Ep {epoch + 1} (Step {run.step:06d}): Train loss {row['train_loss']:.3f}, Val loss {row['val_loss']:.3f}")
                    metrics.write(row)
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    run.hooks().on_step_end(run=run, step=run.step, metrics=row)
                    if evaluating:
                        run.hooks().on_eval(run=run, step=run.step, metrics=row)
                        self.note_eval(parts, progress, row["val_loss"])
                    if run.step % parts.steps_per_epoch == 0 or run.step == parts.total_steps:
                        text = sample()  # on every rank: under fsdp each forward needs them all
                        self.say(text.replace("\n", " "))
                        if main:
                            append_text(samples_path, f"epoch {epoch + 1}, step {run.step}:\n{text}\n\n")
                        run.hooks().on_sample(run=run, step=run.step, text=text)
                    patience_over = t.early_stopping_patience and progress.evals_since_best >= t.early_stopping_patience
                    if patience_over:
                        self.say(f"early stopping: no better val_loss in {progress.evals_since_best} evaluations")
                    stopped = distributed.max_over_ranks(stop.signal or 0, run.device)  # a signal to one rank stops them all
                    if stopped or patience_over or run.step == parts.total_steps or (t.checkpoint_every and run.step % t.checkpoint_every == 0):
                        path = self.save_checkpoint(parts, progress)
                    if stopped or patience_over:
                        break
            if main:
                plot_losses(metrics.rows, out_dir / "loss.png")
            run.hooks().on_train_end(run=run, metrics=row)
            if stopped:  # raised once the progress bar is closed, so its message gets lines of its own
                raise RunInterrupted(checkpoint=path, step=run.step, signal=stopped, metrics=row, resume_command=run.resume_command(path))
        except BaseException as error:  # a NaN loss, a bug, a second Ctrl-C, an interruption: the trackers hear of it
            run.hooks().on_train_error(run=run, error=error)
            raise
        return row
