"""The training engine, shared by every recipe that trains (pretrain, instruct, ...).

A recipe sets the run up (`gptkit.runs.setup_run`: device, seed, run folder, tokenizer, model), builds
its own examples and collator with the run's context, and calls `fit(run, train_set, val_set,
collator)`. Read `fit` top to bottom: it builds what every step uses once (`Parts`: the finetune
strategy, the model under the distribution strategy, AdamW with weight-decay groups, mixed
precision), resumes, then loops: a step (`train_step`: gradient accumulation and clipping), an
evaluation every `eval_every` steps, a sample at each epoch end, a checkpoint when one is due. The
run folder's records (metrics.jsonl, samples.txt, loss.png) are written by `RunFolder`, one of the
run's observers, which receive the training hooks; an observer may ask to stop
(`run.request_stop`). Checkpoints and exact resume live in gptkit.checkpoint.

Under torchrun the same loop runs in every process (gptkit.distributed: ddp or fsdp). `batch_size`
stays the global batch, each rank taking its share; a step's loss is the sum of per-token losses
over the target count of the whole global batch (all-reduced), so N processes follow one. Rank 0
alone writes and calls the hooks; every rank joins evaluation, samples and checkpoint gathering;
a stop (a signal to any rank, early stopping, an observer's request) is agreed by all.

Semantics follow the original scripts (llms-from-scratch ch05 `train_model_simple`): one optimizer
step per `batch_size` examples, incomplete last batches dropped; evaluation after the first step and
every `eval_every` steps after it, as eval-mode means over `eval_batches` batches of each split; a
sample at each epoch end (and at the last step); `tokens_seen` counts input tokens. Resume is exact:
the data order of an epoch is a function of (seed, epoch), and the checkpoint holds the RNG and
optimizer states.

The run folder is claimed (locked) before anything in it is read or written, then cleared of what a
killed run left. A file that cannot be written stops the run with an error naming it and the last
intact checkpoint. SIGINT or SIGTERM saves a checkpoint and raises RunInterrupted.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import attrs
import torch
from tqdm import tqdm

from gptkit import checkpoint, distributed
from gptkit.checkpoint import TrainingState
from gptkit.errors import GptkitError, RunInterrupted, WriteError
from gptkit.evaluation import summed_lm_loss
from gptkit.files import append_text
from gptkit.generation import generate
from gptkit.hookspecs import hookimpl
from gptkit.interfaces import Batch, Example
from gptkit.metrics import MetricsLog, read_metrics
from gptkit.plotting import plot_losses
from gptkit.plugins import registry
from gptkit.runs import Run

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


def fit(
    run: Run,
    train_set: Sequence[Example],
    val_set: Sequence[Example],
    collator: Callable[[list[Example]], Batch],
    sample: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Train `run.model` on `train_set`, evaluating on `val_set`; returns the last metrics row.
    `sample()` (default: `[generate] prompt`'s completion) runs on every rank."""
    t = run.config.train
    with naming_the_intact_checkpoint(run):
        parts = build(run, train_set, val_set, collator)
        state = TrainingState()
        start_in_folder(run)
        if not checkpoint.resume_training(run, parts, state):
            return finished_row(run)
        run.write_config()
        folder = RunFolder(run, parts.steps_per_epoch, resumed=state.resumed_from is not None)
        run.track()
        hooks = run.hooks(folder)  # the run folder's records first, then the trackers, observers and plugins
        sample = sample or (lambda: default_sample(run, parts))
        row, stop, order = folder.last_row(), None, []
        try:
            hooks.on_train_start(run=run)
            with StopRequest(abort_on_second=run.world_size == 1) as signals, progress_bar(run, parts) as bar:
                while run.step < parts.total_steps and stop is None:
                    epoch, position = divmod(run.step, parts.steps_per_epoch)
                    if position == 0 or not order:
                        order = epoch_order(len(train_set), run.config.run.seed, epoch, parts.lengths, t.batch_size)
                    lr = lr_at(run.step, lr=t.lr, schedule=t.lr_schedule, warmup_steps=t.warmup_steps, total_steps=parts.total_steps, min_lr=t.min_lr)
                    started = time.perf_counter()
                    ids = my_share(run, order[position * t.batch_size : (position + 1) * t.batch_size])
                    loss, tokens = train_step(run, parts, [train_set[i] for i in ids], lr)
                    run.step += 1
                    state.tokens_seen += tokens
                    row = {"step": run.step, "epoch": run.step / parts.steps_per_epoch, "tokens_seen": state.tokens_seen,
                           "lr": lr, "loss": loss, "tokens_per_s": tokens / (time.perf_counter() - started)}
                    evaluating = (t.eval_every and (run.step - 1) % t.eval_every == 0) or run.step == parts.total_steps
                    if evaluating:
                        row.update(evaluate(run, parts))
                        run.say(f"Ep {epoch + 1} (Step {run.step:06d}): Train loss {row['train_loss']:.3f}, Val loss {row['val_loss']:.3f}")
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    hooks.on_step_end(run=run, step=run.step, metrics=row)
                    if evaluating:
                        hooks.on_eval(run=run, step=run.step, metrics=row)
                        note_eval(run, parts, state, row["val_loss"])
                    if run.step % parts.steps_per_epoch == 0 or run.step == parts.total_steps:
                        text = sample()  # on every rank: under fsdp each forward needs them all
                        run.say(text.replace("\n", " "))
                        hooks.on_sample(run=run, step=run.step, text=text)
                    stop = agreed_stop(run, signals, state)
                    if stop or run.step == parts.total_steps or (t.checkpoint_every and run.step % t.checkpoint_every == 0):
                        path = checkpoint.save_training(run, parts, state)
                        hooks.on_checkpoint(run=run, step=run.step, path=path)
            hooks.on_train_end(run=run, metrics=row)
            if isinstance(stop, int):  # raised once the progress bar is closed, so its message gets lines of its own
                raise RunInterrupted(checkpoint=path, step=run.step, signal=stop, metrics=row, resume_command=run.resume_command(path))
        except BaseException as error:  # a NaN loss, a bug, a second Ctrl-C, an interruption: the observers hear of it
            hooks.on_train_error(run=run, error=error)
            raise
    return row


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
    lengths: list[int] | None  # the training examples' lengths, with train.group_by_length
    steps_per_epoch: int
    total_steps: int


def build(run: Run, train_set: Sequence[Example], val_set: Sequence[Example], collator: Callable[[list[Example]], Batch]) -> Parts:
    """The finetune strategy, the model under the distribution strategy, and the optimizer built
    after wrapping (FSDP replaces the parameters by their shards)."""
    t = run.config.train
    distributed.check_batch(t.batch_size, t.grad_accum, run.world_size)
    steps_per_epoch = len(train_set) // t.batch_size
    if steps_per_epoch == 0:
        raise GptkitError(f"the training split has {len(train_set)} examples, fewer than train.batch_size = {t.batch_size}")
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps > total_steps:
        run.say(
            f"train.max_steps = {t.max_steps} is more than train.epochs = {t.epochs} x {steps_per_epoch} steps per epoch: "
            f"training stops at step {total_steps} (raise train.epochs to reach {t.max_steps})"
        )
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
        lengths=[len(example.input_ids) for example in train_set] if t.group_by_length else None,
        steps_per_epoch=steps_per_epoch,
        total_steps=min(total_steps, t.max_steps) if t.max_steps else total_steps,
    )


@contextlib.contextmanager
def naming_the_intact_checkpoint(run: Run) -> Iterator[None]:
    """A file that cannot be written stops the run: its error names it and the last intact checkpoint."""
    try:
        yield
    except WriteError as exc:
        raise WriteError(exc.path, f"{exc.reason}; {checkpoint.intact(run.out_dir, run.resume_command)}") from exc


def start_in_folder(run: Run) -> None:
    """Claim the run folder, then clear what an interrupted run left in it, before any rank reads it."""
    run.claim_folder()
    cleared = distributed.broadcast_object(checkpoint.clean_run_folder(run.out_dir) if run.is_main else None)
    if cleared:
        run.say(f"cleared what an interrupted run left in {run.out_dir}: {', '.join(p.name for p in cleared)}")


def finished_row(run: Run) -> dict[str, Any]:
    """The last metrics row of a run that has nothing left to train."""
    rows = [r for r in read_metrics(run.out_dir / "metrics.jsonl") if r["step"] <= run.step]
    return rows[-1] if rows else {}


@contextlib.contextmanager
def progress_bar(run: Run, parts: Parts) -> Iterator[tqdm]:
    with tqdm(total=parts.total_steps, initial=run.step, desc=run.config.run.name, unit="step", disable=not run.is_main) as bar:
        yield bar


def agreed_stop(run: Run, signals: StopRequest, state: TrainingState) -> int | str | None:
    """Why training ends after this step, the same on every rank: the number of a signal any rank
    got (SIGINT, SIGTERM), or the reason early stopping or an observer (`run.request_stop`) gave;
    None to go on."""
    signal_number = distributed.max_over_ranks(signals.signal or 0, run.device)
    if signal_number:
        return signal_number
    patience = run.config.train.early_stopping_patience
    reason = run.stop_request  # asked for by an observer, in the main process only
    if reason is None and patience and state.evals_since_best >= patience:
        reason = f"early stopping: no better val_loss in {state.evals_since_best} evaluations"
    if distributed.max_over_ranks(int(reason is not None), run.device):
        run.say(reason or "")
        return reason or "stopped on rank 0's request"
    return None


# --- pieces of a step ------------------------------------------------------------------------------


def target_count(batch: Batch) -> int:
    """How many targets of `batch` take a loss (those not equal to its ignore index)."""
    return int((batch.targets != batch.ignore_index).sum())


def on_device(run: Run, parts: Parts, examples: list[Example]) -> Batch:
    """The collated batch on the device (to CUDA from pinned memory, so that the copy runs beside
    the GPU's work). A collator may also return a plain (inputs, targets) pair, whose ignore
    index is the default -100."""
    batch = parts.collator(examples)
    if not isinstance(batch, Batch):
        batch = Batch(*batch)

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if run.device.type == "cuda":
            return tensor.pin_memory().to(run.device, non_blocking=True)
        return tensor.to(run.device)

    return Batch(move(batch.inputs), move(batch.targets), batch.ignore_index)


def summed_loss(run: Run, parts: Parts, batch: Batch) -> torch.Tensor:
    """The sum of the per-token losses of `batch` (see `target_count` for what it is divided by)."""
    dtype = parts.autocast_dtype
    with torch.autocast(run.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        logits = parts.forward(batch.inputs)
    return parts.lm_loss(logits, batch.targets, batch.ignore_index)


def my_share(run: Run, items: Sequence[int]) -> list[int]:
    """This rank's contiguous share of `items` (a batch's example ids), as even as it can be."""
    n, world, rank = len(items), run.world_size, run.rank
    start, end = rank * n // world, (rank + 1) * n // world
    return list(items[start:end])


def train_step(run: Run, parts: Parts, examples: list[Example], lr: float) -> tuple[float, int]:
    """One optimizer step over this rank's `examples` in `grad_accum` micro-batches; returns
    (loss of the global batch, input tokens of the global batch).

    The loss is the sum of the per-token losses over every rank and micro-batch divided by the
    number of targets they hold together, however the batch is split: each micro-batch adds
    its summed loss times world_size / targets, since DDP and FSDP average gradients over ranks."""
    t = run.config.train
    parts.forward.train()
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    micro = math.ceil(len(examples) / t.grad_accum)
    batches = [on_device(run, parts, examples[i : i + micro]) for i in range(0, len(examples), micro)]
    targets, tokens = distributed.all_sum([sum(map(target_count, batches)), sum(b.inputs.numel() for b in batches)], run.device)
    scale = run.world_size / targets if targets else math.nan  # no target at all: NaN, as a mean over none
    loss_sum = 0.0
    for i, batch in enumerate(batches):
        with gradient_sync(run, parts, last=i == len(batches) - 1):
            loss = summed_loss(run, parts, batch)
            parts.scaler.scale(loss * scale).backward()
        loss_sum += loss.item()
    (loss_sum,) = distributed.all_sum([loss_sum], run.device)
    loss = loss_sum / targets if targets else math.nan
    if not math.isfinite(loss):
        parts.optimizer.zero_grad(set_to_none=True)
        last = checkpoint.step_checkpoints(run.out_dir)
        raise GptkitError(
            f"training loss is {loss} at step {run.step + 1}; stopped without saving "
            f"(last good checkpoint: {last[-1] if last else 'none'}). Try a lower train.lr, train.grad_clip, or precision fp32"
        )
    if t.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    return loss, int(tokens)


def gradient_sync(run: Run, parts: Parts, *, last: bool):
    """Gradients are averaged over ranks once per step, after the last micro-batch."""
    if run.strategy == "ddp" and not last:
        return parts.forward.no_sync()
    if run.strategy == "fsdp":
        run.model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


# --- evaluation and samples --------------------------------------------------------------------------


@torch.no_grad()  # not inference_mode: FSDP reuses the buffers it gathers parameters into
def mean_loss(run: Run, parts: Parts, examples: Sequence[Example], order: Sequence[int]) -> float:
    """Eval-mode mean of the batch losses over the first `eval_batches` (micro-)batches (NaN
    when empty); each batch's loss is token-weighted over its examples on every rank."""
    t = run.config.train
    bs = t.batch_size // t.grad_accum
    parts.forward.eval()
    losses = []
    for s in range(0, len(order), bs)[: t.eval_batches]:
        ids = order[s : s + bs]
        mine = my_share(run, ids)
        weight = 1.0 if mine else 0.0  # a rank with no example of a short last batch still joins the forward
        batch = on_device(run, parts, [examples[i] for i in mine or ids[:1]])
        total, count = distributed.all_sum([weight * summed_loss(run, parts, batch).item(), weight * target_count(batch)], run.device)
        losses.append(total / count if count else math.nan)
    parts.forward.train()
    return sum(losses) / len(losses) if losses else math.nan


def evaluate(run: Run, parts: Parts) -> dict[str, float]:
    return {
        "train_loss": mean_loss(run, parts, parts.train_set, parts.train_eval_order),
        "val_loss": mean_loss(run, parts, parts.val_set, range(len(parts.val_set))),
    }


def note_eval(run: Run, parts: Parts, state: TrainingState, val_loss: float) -> None:
    """Track the best val_loss and count evaluations without improvement. The best weights are
    kept in (CPU) memory and written as checkpoints/best with the next checkpoint, so a run whose
    loss keeps improving does not write a full model at every evaluation."""
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.evals_since_best = val_loss, 0
        if run.config.train.save_best:
            state.best_weights = {k: v.to("cpu", copy=True) for k, v in checkpoint.saved_weights(run, parts).items()}
            state.best_trained = {k: v.to("cpu", copy=True) for k, v in (parts.finetune.trained_state(run.model) or {}).items()} or None
    else:
        state.evals_since_best += 1


def default_sample(run: Run, parts: Parts) -> str:
    """A sample from `[generate] prompt` with `[generate] sampler`, seeded by step (the training RNG is untouched)."""
    g = run.config.generate
    completion = generate(
        run.model, run.tokenizer, g.prompt, max_new_tokens=g.max_new_tokens, sampler=parts.sampler,
        seed=run.config.run.seed + run.step, ignore_eos=g.ignore_eos,
    )
    return g.prompt + completion


# --- the run folder's records ----------------------------------------------------------------------


class RunFolder:
    """A run observer that keeps the run folder's records of training: every metrics row in
    metrics.jsonl (on resume, rows after the checkpoint's step are dropped first), every sample in
    samples.txt, and loss.png when training ends. Its hooks run before any other observer's, so
    that a tracker finds the files up to date."""

    def __init__(self, run: Run, steps_per_epoch: int, resumed: bool):
        self.steps_per_epoch = steps_per_epoch
        self.metrics = MetricsLog(run.out_dir / "metrics.jsonl", run.step if resumed else None, write=run.is_main)
        self.samples = run.out_dir / "samples.txt"
        if run.is_main and not resumed:
            self.samples.unlink(missing_ok=True)

    def last_row(self) -> dict[str, Any]:
        return self.metrics.rows[-1] if self.metrics.rows else {}

    @hookimpl(tryfirst=True)
    def on_step_end(self, run, step, metrics):
        self.metrics.write(metrics)

    @hookimpl(tryfirst=True)
    def on_sample(self, run, step, text):
        append_text(self.samples, f"epoch {math.ceil(step / self.steps_per_epoch)}, step {step}:\n{text}\n\n")

    @hookimpl(tryfirst=True)
    def on_train_end(self, run, metrics):
        plot_losses(self.metrics.rows, run.out_dir / "loss.png")
