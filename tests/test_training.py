"""The training engine on a tiny model: exact resume, Ctrl-C, checkpoints, metrics, hooks, bad input."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gptkit
from gptkit import checkpoint, plugins
from gptkit.config import load_config
from gptkit.errors import GptkitError, RunInterrupted
from gptkit.evaluation import text_loss
from gptkit.testing import tiny_text, write_tiny_pretrain
from gptkit.training import lr_at

def tiny_config(tmp_path: Path, *overrides: str):
    """gptkit.testing's tiny pretraining experiment, written once into tmp_path, its run in tmp_path/run."""
    experiment = tmp_path / "tiny.toml"
    if not experiment.exists():
        write_tiny_pretrain(tmp_path)
    base = [f"run.out_dir={tmp_path / 'run'}", f"data.dataset.cache_dir={tmp_path / 'cache'}", "run.threads=1"]
    return load_config(experiment, base + list(overrides))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rows(run_dir)]


def test_run_writes_metrics_plot_samples_and_checkpoints(tmp_path):
    final = gptkit.run(tiny_config(tmp_path, "train.save_best=true"))
    run = tmp_path / "run"
    logged = rows(run)
    steps_per_epoch = len(logged) // 3
    assert [r["step"] for r in logged] == list(range(1, 3 * steps_per_epoch + 1))
    assert set(logged[1]) == {"step", "epoch", "tokens_seen", "lr", "loss", "tokens_per_s"}
    evals = [r["step"] for r in logged if "val_loss" in r]
    assert evals == sorted({*range(1, len(logged) + 1, 3), len(logged)})  # after step 1, every 3, and at the end
    assert logged[-1]["tokens_seen"] == len(logged) * 4 * 32 and logged[-1]["epoch"] == 3.0
    assert final == logged[-1] and final["train_loss"] < logged[0]["train_loss"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "samples.txt").read_text().count("Every effort moves you") == 3  # one per epoch
    assert [p.name for p in checkpoint.step_checkpoints(run)] == [f"step-{len(logged):06d}"]
    model, tokenizer = gptkit.load_model(run / "checkpoints" / "best")
    assert tokenizer.name == "bytes" and not model.training
    assert "provenance" in (run / "config.toml").read_text()


def test_resume_after_max_steps_equals_an_uninterrupted_run(tmp_path):
    """Stopped at step 5 (mid-epoch) by max_steps, resumed to 11 (across epoch ends): same losses, with dropout."""
    full, part = tmp_path / "full", tmp_path / "part"
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={full}", "train.max_steps=11"))
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={part}", "train.max_steps=5"))
    assert len(losses(part)) == 5
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={part}", "train.max_steps=11", "run.resume=auto"))
    assert losses(part) == losses(full)
    evals_full = {r["step"]: (r["train_loss"], r["val_loss"]) for r in rows(full) if "val_loss" in r}
    evals_part = {r["step"]: (r["train_loss"], r["val_loss"]) for r in rows(part) if "val_loss" in r}
    assert {s: v for s, v in evals_part.items() if s != 5} == evals_full  # 5: the first run's final evaluation
    assert [r["tokens_seen"] for r in rows(part)] == [r["tokens_seen"] for r in rows(full)]


def test_a_checkpoint_of_gptkit_before_distributed_training_resumes_exactly(tmp_path):
    """Checkpoints saved before the distributed engine held the optimizer's state by position and one
    RNG state: rewritten to that layout, step 5 still resumes to the uninterrupted run's losses."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from gptkit.training import build_optimizer

    full, part = tmp_path / "full", tmp_path / "part"
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={full}", "train.max_steps=8"))
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={part}", "train.max_steps=5"))
    folder = checkpoint.step_checkpoints(part)[-1]
    state = checkpoint.load_training_state(folder)
    model, _ = gptkit.load_model(folder)
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.1, betas=(0.9, 0.95), device=torch.device("cpu"))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    state.update(optimizer=optimizer.state_dict(), rng=state["rng"][0])
    del state["world_size"]
    torch.save(state, folder / checkpoint.STATE)
    (folder / checkpoint.CHECKSUMS).unlink()
    checkpoint.write_checksums(folder)
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={part}", "train.max_steps=8", "run.resume=auto"))
    assert losses(part) == losses(full)


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=5"))
    resume_from = run / "checkpoints" / "step-000004"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=5", f"run.resume={resume_from}"))
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5]


def cli_run(tmp_path: Path, *args: str, options=(), env=None) -> list[str]:
    """The command line `gptkit [options] run tiny.toml ...` on the tiny experiment, as a subprocess argv."""
    tiny_config(tmp_path)  # writes the experiment
    return [sys.executable, "-m", "gptkit", *options, "run", str(tmp_path / "tiny.toml"), f"data.dataset.cache_dir={tmp_path / 'cache'}", "run.threads=1", *args]


def signal_after_steps(argv: list[str], out_dir: Path, sig: int, steps: int = 3, **env: str) -> tuple[int, str, str]:
    """Run `argv`, send `sig` once `steps` rows are logged; (exit code, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        metrics = out_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def as_shown(stream: str) -> list[str]:
    """The lines of a captured stream as a terminal shows them: each ends where its last \\r began."""
    return [line.rsplit("\r", 1)[-1] for line in stream.split("\n")]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(tmp_path):
    stopped = tmp_path / "stopped"
    code, out, err = signal_after_steps(cli_run(tmp_path, "train.epochs=40", f"run.out_dir={stopped}"), stopped, signal.SIGINT, TQDM_DISABLE="")
    assert code == 130, err
    saved = checkpoint.step_checkpoints(stopped)
    assert len(saved) == 1
    k = int(saved[0].name.split("-")[1])
    shown = as_shown(err)
    assert "SIGINT: stopping after this step and saving a checkpoint (a second one aborts)" in shown  # on a line of its own, not the bar's
    assert f"interrupted at step {k}; checkpoint saved to {saved[0]}" in shown
    assert any(line.startswith("resume with: gptkit run") and line.endswith(f"run.resume={saved[0]}") for line in shown)
    assert "Traceback" not in err and len(losses(stopped)) == k

    n = k + 4
    full = tmp_path / "full"
    for out_dir, extra in ((stopped, [f"run.resume={saved[0]}"]), (full, [])):
        subprocess.run(cli_run(tmp_path, "train.epochs=40", f"run.out_dir={out_dir}", f"train.max_steps={n}", *extra), check=True, capture_output=True)
    assert losses(stopped) == losses(full)


@pytest.mark.slow
def test_sigterm_exits_143_and_the_resume_command_under_debug_reproduces_the_run(tmp_path):
    out = tmp_path / "run"
    code, _, err = signal_after_steps(cli_run(tmp_path, "train.epochs=10", f"run.out_dir={out}", options=["--debug"]), out, signal.SIGTERM)
    assert code == 143, err
    (command,) = [line.removeprefix("resume with: ") for line in err.splitlines() if line.startswith("resume with: ")]
    argv = shlex.split(command)
    assert argv[:3] == ["gptkit", "--debug", "run"] and "train.epochs=10" in argv and f"run.out_dir={out}" in argv
    resumed = subprocess.run([sys.executable, "-m", "gptkit", *argv[1:]], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in rows(out)]
    assert steps == list(range(1, steps[-1] + 1)) and rows(out)[-1]["epoch"] == 10.0


def test_interrupted_run_raises_run_interrupted_in_process(tmp_path, monkeypatch):
    """gptkit.run() tells a cut run from a finished one: RunInterrupted, with the checkpoint and signal."""
    from gptkit import training

    real = training.train_step

    def step_then_signal(run, parts, examples, lr):
        result = real(run, parts, examples, lr)
        if run.step == 2:  # the third step: the handler is installed, as for a real Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(training, "train_step", step_then_signal)
    with pytest.raises(RunInterrupted) as caught:
        gptkit.run(tiny_config(tmp_path, "train.max_steps=8"))
    stopped = caught.value
    assert stopped.step == 3 and stopped.signal == signal.SIGINT and stopped.exit_code == 130
    assert stopped.checkpoint == tmp_path / "run" / "checkpoints" / "step-000003" and stopped.metrics["step"] == 3
    assert "run.resume=" in stopped.resume_command
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_out_dir_with_another_runs_checkpoints_needs_resume(tmp_path):
    gptkit.run(tiny_config(tmp_path, "train.max_steps=2"))
    with pytest.raises(GptkitError, match=r"holds checkpoints of an earlier run; continue it with run.resume=auto"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=2"))


def test_resume_path_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptkitError, match=r"run.resume: .*empty is neither a run checkpoint"):
        gptkit.run(tiny_config(tmp_path, f"run.resume={tmp_path / 'empty'}"))


def test_retention_keeps_the_last_checkpoints(tmp_path):
    gptkit.run(tiny_config(tmp_path, "train.max_steps=7", "train.checkpoint_every=2", "train.keep_checkpoints=2"))
    assert [p.name for p in checkpoint.step_checkpoints(tmp_path / "run")] == ["step-000006", "step-000007"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    state = checkpoint.load_training_state(tmp_path / "run" / "checkpoints" / "step-000007")
    assert state["step"] == 7 and "optimizer" in state and state["rng"][0]["torch"].dtype == torch.uint8  # by rank


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(GptkitError, match=r"could not save the checkpoint of step 4: .*step-000004/training_state.pt: cannot write: no space left on the device; the previous checkpoint .*step-000002 is intact"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "train.checkpoint_every=2", "train.save_best=false"))
    run = tmp_path / "run"
    assert [p.name for p in checkpoint.step_checkpoints(run)] == ["step-000002"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    gptkit.load_model(run / "checkpoints" / "step-000002")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from gptkit import training

    real = training.summed_lm_loss
    calls = []

    def poisoned(logits, targets, ignore_index):
        calls.append(torch.is_grad_enabled())
        loss = real(logits, targets, ignore_index)
        return loss * math.nan if sum(calls) > 3 else loss  # the 4th training step goes NaN

    monkeypatch.setattr(training, "summed_lm_loss", poisoned)
    with pytest.raises(GptkitError, match=r"training loss is nan at step 4; stopped without saving \(last good checkpoint: .*step-000002\)"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=8", "train.checkpoint_every=2"))
    assert [p.name for p in checkpoint.step_checkpoints(tmp_path / "run")] == ["step-000002"]


def test_early_stopping_on_val_loss(tmp_path, monkeypatch):
    from gptkit import training

    monkeypatch.setattr(training, "evaluate", lambda run, parts: {"train_loss": 1.0, "val_loss": 2.0})
    final = gptkit.run(tiny_config(tmp_path, "train.eval_every=1", "train.early_stopping_patience=2"))
    assert final["step"] == 3  # step 1 sets the best; steps 2 and 3 do not improve on it
    assert [p.name for p in checkpoint.step_checkpoints(tmp_path / "run")] == ["step-000003"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = gptkit.run(tiny_config(tmp_path, f"run.out_dir={tmp_path / 'a'}", "model.drop_rate=0.0", "train.max_steps=3"))
    acc = gptkit.run(tiny_config(tmp_path, f"run.out_dir={tmp_path / 'b'}", "model.drop_rate=0.0", "train.max_steps=3", "train.grad_accum=2"))
    for a, b in zip(rows(tmp_path / "a"), rows(tmp_path / "b")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert acc["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)


def test_training_hooks_see_every_event(tmp_path):
    seen = []

    class Observer:
        @gptkit.hookimpl
        def on_train_start(self, run):
            seen.append(("start", run.config.run.name, run.out_dir.name))

        @gptkit.hookimpl
        def on_step_end(self, run, step, metrics):
            seen.append(("step", step, "loss" in metrics))

        @gptkit.hookimpl
        def on_eval(self, run, step, metrics):
            seen.append(("eval", step, "val_loss" in metrics))

        @gptkit.hookimpl
        def on_checkpoint(self, run, step, path):
            seen.append(("checkpoint", step, Path(path).name))

        @gptkit.hookimpl
        def on_train_end(self, run, metrics):
            seen.append(("end", metrics["step"]))

    observer = Observer()
    plugins.manager.register(observer)
    try:
        gptkit.run(tiny_config(tmp_path, "train.max_steps=4"))
    finally:
        plugins.manager.unregister(observer)
    assert seen == [
        ("start", "tiny", "run"),
        ("step", 1, True), ("eval", 1, True),
        ("step", 2, True), ("step", 3, True),
        ("step", 4, True), ("eval", 4, True),
        ("checkpoint", 4, "step-000004"),
        ("end", 4),
    ]


def test_lr_schedule():
    kw = dict(lr=1.0, warmup_steps=2, total_steps=10, min_lr=0.1)
    assert [lr_at(s, schedule="constant", **kw) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [lr_at(s, schedule="cosine", **kw) for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))


def tiny_model(context=16):
    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, context_length=context, emb_dim=16, n_heads=2, n_layers=1)).eval()


def test_text_loss_in_one_window_is_plain_cross_entropy():
    model = tiny_model()
    ids = torch.randint(0, 50, (12,)).tolist()
    result = text_loss(model, ids)
    logits = model(torch.tensor([ids[:-1]]))
    expected = F.cross_entropy(logits[0], torch.tensor(ids[1:])).item()
    assert result["tokens"] == 11
    assert result["loss"] == pytest.approx(expected, rel=1e-5) and result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_text_loss_without_overlap_is_the_mean_over_separate_chunks():
    model = tiny_model()
    ids = torch.randint(0, 50, (40,)).tolist()
    # stride = context: inputs ids[0:16], ids[16:32], ids[32:39], each scored on its own
    chunks = [(0, 16), (16, 32), (32, 39)]
    nll = sum(F.cross_entropy(model(torch.tensor([ids[a:b]]))[0], torch.tensor(ids[a + 1 : b + 1]), reduction="sum").item() for a, b in chunks)
    result = text_loss(model, ids)
    assert result["tokens"] == 39 and result["loss"] == pytest.approx(nll / 39, rel=1e-5)


def test_text_loss_with_stride_1_gives_every_token_the_full_context():
    model = tiny_model()
    ids = torch.randint(0, 50, (40,)).tolist()
    # token j (j >= 1) is predicted from the 16 tokens before it, or from all of them when j <= 16
    nll = 0.0
    for j in range(1, 40):
        context = ids[max(0, j - 16) : j]
        nll += F.cross_entropy(model(torch.tensor([context]))[0, -1], torch.tensor(ids[j])).item()
    result = text_loss(model, ids, stride=1)
    assert result["tokens"] == 39 and result["loss"] == pytest.approx(nll / 39, rel=1e-5)


def test_text_loss_bad_input():
    model = tiny_model()
    with pytest.raises(GptkitError, match="at least 2 are needed"):
        text_loss(model, [3])
    with pytest.raises(GptkitError, match="--stride must be between 1 and the context length 16"):
        text_loss(model, [1, 2, 3], stride=17)


@pytest.mark.slow
def test_eval_command_and_evaluate_recipe(tmp_path):
    gptkit.run(tiny_config(tmp_path, "train.max_steps=2"))
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text()[:500], encoding="utf-8")
    cli = [sys.executable, "-m", "gptkit", "eval", str(tmp_path / "run"), "--text", str(text)]
    out = subprocess.run([*cli, "--json", "--stride", "8"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert set(result) == {"loss", "perplexity", "tokens"} and result["tokens"] == 499
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    human = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert human.startswith("loss ") and "perplexity" in human

    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3(")
    bad = subprocess.run([*cli[:-1], str(tmp_path / "bad.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.txt'}: not UTF-8 text: byte 0xc3 at line 2, byte offset 3; convert it to UTF-8 (e.g. `iconv -t utf-8`)"
    ]

    config = tiny_config(tmp_path, "run.recipe=evaluate", f"run.out_dir={tmp_path / 'ev'}", f"eval.text={text}", "eval.stride=8")
    recipe_result = gptkit.run(config)
    assert recipe_result["tokens"] == 499 and json.loads((tmp_path / "ev" / "eval.json").read_text()) == recipe_result


def test_precision_auto_is_bf16_where_the_hardware_computes_it(monkeypatch):
    from gptkit import runs

    cpu = torch.device("cpu")
    assert runs.resolve_precision("fp32", cpu) == "fp32" and runs.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(runs, "cpu_has_bf16", lambda: True)
    assert runs.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runs, "cpu_has_bf16", lambda: False)
    assert runs.resolve_precision("auto", cpu) == "fp32"


def test_length_grouped_order_is_a_permutation_with_less_padding():
    from gptkit.training import epoch_order

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 300, (1001,), generator=gen).tolist()

    def padded(order, bs=8):
        batches = [order[i : i + bs] for i in range(0, len(order) - len(order) % bs, bs)]
        return sum(bs * max(lengths[i] for i in b) for b in batches)

    plain = epoch_order(1001, 7, 0)
    grouped = epoch_order(1001, 7, 0, lengths, 8)
    assert sorted(grouped) == list(range(1001)) and grouped == epoch_order(1001, 7, 0, lengths, 8)  # a permutation, seeded
    assert grouped != epoch_order(1001, 7, 1, lengths, 8)  # a new order each epoch
    assert padded(grouped) < 0.7 * padded(plain)


def test_max_steps_that_the_epochs_cannot_reach_is_said_at_the_start(tmp_path, capsys):
    """train.max_steps stops training early; it never trains past train.epochs, and says so (issue 21, item 6)."""
    final = gptkit.run(tiny_config(tmp_path, "train.epochs=1", "train.max_steps=1000"))
    steps = final["step"]
    out = capsys.readouterr().out
    assert f"train.max_steps = 1000 is more than train.epochs = 1 x {steps} steps per epoch: training stops at step {steps}" in out
    assert out.index("train.max_steps = 1000") < out.index("Ep 1 (Step 000001)")


def test_an_observer_hears_its_own_run_only_and_may_stop_it(tmp_path):
    """gptkit.run(config, observers=[...]): the observer hears that run's hooks, no other run's, and
    `run.request_stop` ends training after the step with a checkpoint, as early stopping does."""

    class StopAtTwo:
        def __init__(self):
            self.steps = []

        @gptkit.hookimpl
        def on_step_end(self, run, step, metrics):
            self.steps.append((run.out_dir.name, step))
            if step == 2:
                run.request_stop("the observer has seen enough")

    observer = StopAtTwo()
    final = gptkit.run(tiny_config(tmp_path, f"run.out_dir={tmp_path / 'watched'}"), observers=[observer])
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={tmp_path / 'other'}", "train.max_steps=3"))
    assert observer.steps == [("watched", 1), ("watched", 2)]
    assert final["step"] == 2 and [r["step"] for r in rows(tmp_path / "watched")] == [1, 2]
    assert [p.name for p in checkpoint.step_checkpoints(tmp_path / "watched")] == ["step-000002"]
