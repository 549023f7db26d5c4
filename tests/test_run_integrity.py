"""Run-folder integrity: one writer per folder, write failures that name the file and what is intact,
damaged checkpoints skipped for intact ones, what a kill leaves cleared, metrics cut short, settings
changed on resume, file modes, and Ctrl-C while gptkit starts. (SIGKILL and resume: test_soak_kill_resume.py.)"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gptkit
from gptkit import checkpoint, plugins
from gptkit.config import load_config
from gptkit.errors import CorruptCheckpoint, GptkitError, WriteError
from gptkit.files import append_text, writing
from gptkit.lock import FolderLock
from gptkit.errors import GptkitWarning
from gptkit.runs import trajectory_changes
from test_training import cli_run, losses, rows, tiny_config


# --- one writer per run folder ---------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_and_readers_need_no_lock(tmp_path):
    out = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=2"))
    holder = FolderLock(out)
    holder.acquire()
    try:
        refused = rf"{out} is in use by another run \(PID {os.getpid()} on host {socket.gethostname()}, since [-0-9: ]+\); wait for it to end, or give this run another run.out_dir"
        with pytest.raises(GptkitError, match=refused):
            gptkit.run(tiny_config(tmp_path, "train.max_steps=4", "run.resume=auto"))
        assert [r["step"] for r in rows(out)] == [1, 2]
        gptkit.load_model(out)  # a reader
    finally:
        holder.release()
    gptkit.run(tiny_config(tmp_path, "train.max_steps=4", "run.resume=auto"))
    FolderLock(out).acquire()  # gptkit.run released it when the run ended


@pytest.mark.slow
def test_two_processes_into_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(cli_run(tmp_path, "train.epochs=400", f"run.out_dir={out}"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(cli_run(tmp_path, "train.epochs=400", f"run.out_dir={out}", "run.resume=auto"), capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert second.returncode == 2
    assert f"error: {out} is in use by another run (PID {first.pid} on host {socket.gethostname()}" in second.stderr


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"from gptkit.lock import FolderLock; lock = FolderLock({str(tmp_path)!r}); lock.acquire(); print(1, flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "1\n"
    with pytest.raises(GptkitError, match=f"PID {holder.pid} on host"):
        FolderLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    FolderLock(tmp_path).acquire()


# --- write failures ----------------------------------------------------------------------------------


def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs a tmpfs mount (root)")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=4m")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Leave no free block on `disk`."""
    with open(disk / "filler", "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(1 << 16))


class FillDisk:
    """A plugin that fills `disk` at the end of the first step for which `when(metrics)` holds."""

    def __init__(self, disk: Path, when):
        self.disk, self.when, self.done = disk, when, False

    @gptkit.hookimpl
    def on_step_end(self, run, step, metrics):
        if not self.done and self.when(metrics):
            fill(self.disk)
            self.done = True


@contextlib.contextmanager
def disk_filled(disk: Path, when):
    filler = FillDisk(disk, when)
    plugins.manager.register(filler)
    try:
        yield filler
    finally:
        plugins.manager.unregister(filler)


def test_append_cut_short_by_a_full_disk_leaves_the_file_as_it_was(small_disk):
    path = small_disk / "metrics.jsonl"
    path.write_bytes(b"x" * (os.sysconf("SC_PAGE_SIZE") - 9) + b"\n")  # 8 bytes fit in its last page
    fill(small_disk)
    with pytest.raises(WriteError, match=rf"^{path}: cannot write: no space left on the device$"):
        append_text(path, "y" * 100 + "\n")
    assert path.read_bytes() == b"x" * (os.sysconf("SC_PAGE_SIZE") - 9) + b"\n"


def test_full_disk_while_checkpointing(tmp_path, small_disk):
    run = small_disk / "run"
    config = tiny_config(tmp_path, f"run.out_dir={run}", "train.max_steps=8", "train.checkpoint_every=2")
    with disk_filled(small_disk, lambda m: m["step"] == 4), pytest.raises(GptkitError) as failed:
        gptkit.run(config)
    assert str(failed.value) == (
        f"could not save the checkpoint of step 4: {run}/checkpoints/step-000004/training_state.pt: cannot write: "
        f"no space left on the device; the previous checkpoint {run}/checkpoints/step-000002 is intact"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # no temp folder
    gptkit.load_model(run / "checkpoints" / "step-000002")
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4]


def test_full_disk_while_writing_samples(tmp_path, small_disk):
    run = small_disk / "run"
    config = tiny_config(tmp_path, f"run.out_dir={run}", "train.checkpoint_every=2")
    with disk_filled(small_disk, lambda m: m["epoch"] == 1.0), pytest.raises(WriteError) as failed:
        gptkit.run(config)
    end = rows(run)[-1]["step"]
    last = checkpoint.step_checkpoints(run)[-1]
    assert str(failed.value).startswith(
        f"{run / 'samples.txt'}: cannot write: no space left on the device; the last checkpoint {last} is intact; resume with: "
    )
    assert last.name == f"step-{(end - 1) // 2 * 2:06d}"  # the checkpoint of the step that failed comes after its sample
    assert (run / "samples.txt").read_text() == ""  # nothing half-written


def test_full_disk_while_logging_metrics(tmp_path, small_disk):
    run = small_disk / "run"
    page = os.sysconf("SC_PAGE_SIZE")
    near_a_new_page = lambda m: 0 < -(run / "metrics.jsonl").stat().st_size % page < 100  # the next row crosses into a page  # noqa: E731
    with disk_filled(small_disk, near_a_new_page) as filler, pytest.raises(WriteError) as failed:
        gptkit.run(tiny_config(tmp_path, f"run.out_dir={run}", "train.epochs=5"))
    assert filler.done
    assert str(failed.value) == f"{run / 'metrics.jsonl'}: cannot write: no space left on the device; no checkpoint of this run was saved yet"
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [r["step"] for r in rows(run)] == list(range(1, len(text.splitlines()) + 1))


def test_a_read_only_out_dir_is_said_plainly(tmp_path):
    read_only = tmp_path / "ro"
    mount_tmpfs(read_only, "ro,size=1m")
    try:
        result = subprocess.run(cli_run(tmp_path, f"run.out_dir={read_only / 'run'}", "train.max_steps=2"), capture_output=True, text=True)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {read_only / 'run'}: cannot write: the file system is read-only; no checkpoint of this run was saved yet"
    )


def test_write_errors_say_permissions_plainly(tmp_path):
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'x'}: cannot write: permission denied \(not writable by this user\)$"):
        with writing(tmp_path / "x"):
            raise PermissionError(errno.EACCES, "Permission denied")


# --- metrics.jsonl cut short -----------------------------------------------------------------------


def test_resume_drops_a_half_written_last_metrics_line(tmp_path):
    run = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=4", "train.checkpoint_every=2"))
    metrics = run / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'{"step": 5, "epoch": 0.')  # a kill in the middle of a write
    with pytest.warns(GptkitWarning, match=rf"{metrics}: line 5, the last, was cut short by an interrupted write; dropped it"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "train.checkpoint_every=2", "run.resume=auto"))
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    run = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=4", "train.checkpoint_every=2"))
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[2:]]) + "\n")
    with pytest.raises(GptkitError, match=rf"{metrics}: line 2 is not a metrics row \(.*\); correct or delete that line"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "run.resume=auto"))


# --- damaged checkpoints -----------------------------------------------------------------------------


def three_checkpoints(tmp_path, *extra):
    """A run with checkpoints at steps 2, 4 and 6, and checkpoints/best."""
    keep = ("train.checkpoint_every=2", "train.keep_checkpoints=3", "train.save_best=true", "train.eval_every=1")
    gptkit.run(tiny_config(tmp_path, "train.max_steps=6", *keep, *extra))
    return tmp_path / "run" / "checkpoints", keep


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(data))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_truncated_latest_checkpoint_is_skipped_for_the_one_before(tmp_path):
    checkpoints, keep = three_checkpoints(tmp_path)
    weights = checkpoints / "step-000006" / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    skipped = rf"skipping {checkpoints / 'step-000006'}: {weights}: {size // 2} bytes, but {size} were written \(truncated or damaged\)"
    with pytest.warns(GptkitWarning, match=skipped):
        model, _ = gptkit.load_model(tmp_path / "run")
    expected, _ = gptkit.load_model(checkpoints / "step-000004")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))

    with pytest.warns(GptkitWarning, match=skipped):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=8", *keep, "run.resume=auto"))
    gptkit.run(tiny_config(tmp_path, f"run.out_dir={tmp_path / 'full'}", "train.max_steps=8", *keep))
    assert losses(tmp_path / "run") == losses(tmp_path / "full")  # resumed exactly from step 4
    assert same_weights(checkpoints / "step-000008", tmp_path / "full" / "checkpoints" / "step-000008")


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path):
    checkpoints, keep = three_checkpoints(tmp_path)
    weights = checkpoints / "step-000006" / "model.safetensors"
    flip_a_byte(weights)
    damaged = rf"{weights}: damaged \(its sha256 differs from the one written with it\)"
    with pytest.raises(CorruptCheckpoint, match=damaged):
        gptkit.load_model(checkpoints / "step-000006")  # named itself: no other to fall back to
    generated = subprocess.run([sys.executable, "-m", "gptkit", "generate", str(tmp_path / "run"), "--prompt", "Every", "--max-new-tokens", "2", "--threads", "1"],
                               capture_output=True, text=True)
    assert generated.returncode == 0, generated.stderr
    assert f"warning: skipping {checkpoints / 'step-000006'}: {weights}: damaged" in generated.stderr

    flip_a_byte(checkpoints / "step-000004" / "training_state.pt")
    with pytest.warns(GptkitWarning) as warned:
        gptkit.run(tiny_config(tmp_path, "train.max_steps=8", *keep, "run.resume=auto"))
    assert [str(w.message).split(":")[0] for w in warned] == [f"skipping {checkpoints / 'step-000006'}", f"skipping {checkpoints / 'step-000004'}"]
    assert [r["step"] for r in rows(tmp_path / "run")] == list(range(1, 9))  # resumed from step 2


def test_resume_with_every_checkpoint_damaged_is_an_error(tmp_path):
    checkpoints, keep = three_checkpoints(tmp_path)
    for step in (2, 4, 6):
        flip_a_byte(checkpoints / f"step-{step:06d}" / "training_state.pt")
    with pytest.warns(GptkitWarning), pytest.raises(CorruptCheckpoint, match=r"no intact checkpoint: .*step-000006/training_state.pt: damaged"):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=8", *keep, "run.resume=auto"))


# --- what a kill leaves ------------------------------------------------------------------------------


def test_what_a_kill_leaves_is_cleared_when_the_run_starts_again(tmp_path, capsys):
    checkpoints, keep = three_checkpoints(tmp_path)
    run = tmp_path / "run"
    (checkpoints / ".step-000008.k2j4x").mkdir()  # a checkpoint being written
    (checkpoints / ".step-000008.k2j4x" / "model.safetensors").write_bytes(b"half")
    (checkpoints / ".step-000002.pruned").mkdir()  # a checkpoint being pruned
    (checkpoints / "step-000010").mkdir()  # pruned halfway by an older gptkit
    (checkpoints / "step-000012").mkdir()
    (checkpoints / "step-000012" / "config.json").write_text("{}")
    os.replace(checkpoints / "best", checkpoints / ".best.old")  # between the two renames of replace_dir
    (run / ".config.toml.tmp").write_text("[run")
    capsys.readouterr()
    gptkit.run(tiny_config(tmp_path, "train.max_steps=6", *keep, "run.resume=auto"))
    assert "cleared what an interrupted run left in" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "step-000002", "step-000004", "step-000006"]
    assert not list(run.glob(".*.tmp"))


# --- settings changed on resume ---------------------------------------------------------------------


def test_which_changed_settings_alter_the_trajectory():
    then = {
        "run": {"seed": 1, "out_dir": "a"},
        "model": {"n_layers": 2},
        "train": {"lr": 0.003, "eval_every": 3, "max_steps": 5, "lr_schedule": "constant"},
        "track": {"trackers": []},
        "provenance": {"command": ["gptkit", "run", "x.toml"]},
    }
    now = {
        "run": {"seed": 2, "out_dir": "b"},
        "model": {"n_layers": 3},
        "train": {"lr": 0.01, "eval_every": 5, "max_steps": 9, "lr_schedule": "constant"},
        "track": {"trackers": [{"name": "wandb"}]},
        "provenance": {"command": ["gptkit", "run", "y.toml"]},
    }
    altering, free = trajectory_changes(then, now)
    assert altering == ["model.n_layers: 2 -> 3", "run.seed: 1 -> 2", "train.lr: 0.003 -> 0.01"]
    assert free == ['run.out_dir: "a" -> "b"', 'track.trackers: [] -> [{"name": "wandb"}]', "train.eval_every: 3 -> 5", "train.max_steps: 5 -> 9"]
    cosine = {**then, "train": {**then["train"], "lr_schedule": "cosine"}}
    assert "train.max_steps: 5 -> 9" in trajectory_changes(cosine, {**now, "train": {**now["train"], "lr_schedule": "cosine"}})[0]


def test_resume_refuses_changes_that_alter_the_run_unless_allowed_and_records_them(tmp_path):
    run = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=4"))
    before = (run / "config.toml").read_text()
    step4 = run / "checkpoints" / "step-000004"
    refusal = (
        rf"run.resume: {step4} was trained with other settings; these would change the run's course:\n"
        r"  train.batch_size: 4 -> 2\n  train.lr: 0.003 -> 0.01\n  steps per epoch \(the data or train.batch_size\): 10 -> 20\n"
        r"resume with the settings it was trained with, or set run.resume_changes=allow"
    )
    with pytest.raises(GptkitError, match=refusal):
        gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "train.lr=1e-2", "train.batch_size=2", "run.resume=auto"))
    assert (run / "config.toml").read_text() == before

    gptkit.run(tiny_config(tmp_path, "train.max_steps=6", "train.lr=1e-2", "run.resume=auto", "run.resume_changes=allow"))
    assert [r["lr"] for r in rows(run)] == [0.003] * 4 + [0.01] * 2
    gptkit.run(tiny_config(tmp_path, "train.max_steps=8", "train.lr=1e-2", "train.eval_every=2", "run.resume=auto"))  # free changes only
    recorded = tomllib.loads((run / "config.toml").read_text())
    assert recorded["train"]["lr"] == 0.01 and recorded["train"]["eval_every"] == 2
    assert recorded["provenance"]["resumes"] == [
        {"step": 4, "checkpoint": str(step4), "changes": ["train.lr: 0.003 -> 0.01", "train.max_steps: 4 -> 6"]},
        {"step": 6, "checkpoint": str(run / "checkpoints" / "step-000006"), "changes": ["train.eval_every: 3 -> 2", "train.max_steps: 6 -> 8"]},
    ]
    assert load_config(run / "config.toml").train.lr == 0.01  # `gptkit config validate` still reads it


def test_resume_auto_says_when_there_is_nothing_to_resume_or_nothing_left_to_train(tmp_path, capsys):
    run = tmp_path / "run"
    gptkit.run(tiny_config(tmp_path, "train.max_steps=3", "run.resume=auto"))
    assert f"run.resume=auto: no checkpoint in {run} to resume from; starting at step 0" in capsys.readouterr().out
    before = (run / "metrics.jsonl").read_bytes(), (run / "config.toml").read_bytes()
    final = gptkit.run(tiny_config(tmp_path, "train.max_steps=3", "run.resume=auto"))
    out = capsys.readouterr().out
    assert f"run.resume: {run} finished at step 3; nothing left to train (raise train.max_steps or train.epochs to go on)" in out
    assert final == rows(run)[-1] and ((run / "metrics.jsonl").read_bytes(), (run / "config.toml").read_bytes()) == before


# --- file modes --------------------------------------------------------------------------------------


def test_every_file_of_a_run_follows_the_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        gptkit.run(tiny_config(tmp_path, "train.max_steps=2", "train.save_best=true"))
    finally:
        os.umask(umask)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*")}
    assert "run/checkpoints/step-000002/model.safetensors" in modes and "run/checkpoints/best/checksums.json" in modes
    assert {name: mode for name, mode in modes.items() if mode != (0o750 if (tmp_path / name).is_dir() else 0o640)} == {}


# --- Ctrl-C while gptkit starts ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 1.2, 2.5])
def test_ctrl_c_while_gptkit_starts_prints_no_traceback(tmp_path, delay):
    """The console script imports torch and the plugins first (seconds): Ctrl-C then, or in the
    run's setup, ends with exit 130 and no traceback."""
    script = Path(sys.executable).with_name("gptkit")
    argv = [str(script), *cli_run(tmp_path, f"run.out_dir={tmp_path / 'run'}", "train.epochs=400")[3:]]  # still running at 2.5 s
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted" or "resume with: gptkit run" in err
