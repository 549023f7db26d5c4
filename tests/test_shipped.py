"""`gptkit experiments`: the shipped experiments and sweeps, listed and copied out so that a copy runs
where it lands; and the wheel, which holds them for a user of a non-editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT
from gptkit.cli import cli
from gptkit.config import load_config

SHIPPED = sorted((ROOT / "experiments").glob("*.toml")) + sorted((ROOT / "sweeps").glob("*.yaml"))


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_experiments_lists_every_shipped_file_with_its_first_comment_line():
    result = invoke("experiments")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "experiments:" and "sweeps:" in lines
    for path in SHIPPED:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and len(first) <= 110, path  # a one-line description heads every shipped file
        assert sum(line.split()[0] == path.stem and line.endswith(first[2:]) for line in lines[1:] if line.startswith("  ")) == 1, path
    assert len([line for line in lines if line.startswith("  ")]) == len(SHIPPED)


def test_copied_experiment_brings_its_data_and_runs_where_it_lands(tmp_path):
    result = invoke("experiments", "copy", "tiny_pretrain")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"wrote {tmp_path / 'tiny_pretrain.toml'}", f"wrote {tmp_path / 'data' / 'the-verdict.txt'}"]
    assert (tmp_path / "tiny_pretrain.toml").read_bytes() == (ROOT / "experiments" / "tiny_pretrain.toml").read_bytes()
    assert (tmp_path / "data" / "the-verdict.txt").read_bytes() == (ROOT / "experiments" / "data" / "the-verdict.txt").read_bytes()
    config = load_config(tmp_path / "tiny_pretrain.toml")
    assert config.data.dataset.params["path"] == str(tmp_path / "data" / "the-verdict.txt")  # the copy's own data
    result = invoke("run", "tiny_pretrain.toml", "train.max_steps=2", "train.eval_batches=1", "generate.max_new_tokens=2", "run.threads=1")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "runs" / "tiny-pretrain" / "checkpoints").iterdir()] != []


def test_copy_to_a_folder_or_a_file_name_and_a_second_copy_beside_the_first(tmp_path):
    (tmp_path / "mine").mkdir()
    assert invoke("experiments", "copy", "instruct_test", "mine").exit_code == 0
    assert invoke("experiments", "copy", "instruct_medium.toml", "mine/medium.toml").exit_code == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "mine").rglob("*") if p.is_file()) == [
        "mine/data/instruction-data.json", "mine/instruct_test.toml", "mine/medium.toml",
    ]
    result = invoke("config", "validate", "mine/instruct_test.toml", "mine/medium.toml")
    assert result.exit_code == 0 and result.stdout.count(": ok") == 2
    # the data file is already there, the same bytes: kept; the experiment itself is never overwritten
    (tmp_path / "mine" / "instruct_test.toml").write_text("# edited\n")
    result = invoke("experiments", "copy", "instruct_test", "mine")
    assert result.exit_code == 2
    assert result.stderr == "error: mine/instruct_test.toml: already exists; gptkit experiments copy does not overwrite (remove it, or give another DEST)\n"
    assert (tmp_path / "mine" / "instruct_test.toml").read_text() == "# edited\n"
    (tmp_path / "mine" / "data" / "instruction-data.json").write_text("[]")
    result = invoke("experiments", "copy", "instruct_test", "other.toml")  # its data would replace different bytes
    assert result.exit_code == 0  # other.toml lands in the working folder, with its own data/
    result = invoke("experiments", "copy", "instruct_test", "mine/again.toml")
    assert result.exit_code == 2 and "error: mine/data/instruction-data.json: already exists" in result.stderr
    assert not (tmp_path / "mine" / "again.toml").exists()  # nothing written when any destination is taken


def test_unknown_name_lists_the_names_and_the_nearest():
    result = invoke("experiments", "copy", "quickstrat")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no shipped experiment or sweep 'quickstrat' (shipped: gpt2_generate, instruct_medium,")
    assert result.stderr.endswith("quickstart_lr); did you mean 'quickstart'?\n")


def test_copied_sweep_takes_its_experiment_along(tmp_path):
    pytest.importorskip("sweeps", reason="the wandb extra (W&B's sweep engine) reads sweep files")
    from gptkit.sweep import load_sweep

    result = invoke("experiments", "copy", "quickstart_lr", "sweep/")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["quickstart.toml", "quickstart_lr.yaml"]
    text = (tmp_path / "sweep" / "quickstart_lr.yaml").read_text()
    assert "\nprogram: quickstart.toml\n" in text
    assert text.replace("program: quickstart.toml", "program: ../experiments/quickstart.toml") == (ROOT / "sweeps" / "quickstart_lr.yaml").read_text()
    checked = load_sweep(tmp_path / "sweep" / "quickstart_lr.yaml")
    assert Path(checked.program) == tmp_path / "sweep" / "quickstart.toml"


@pytest.mark.slow
def test_wheel_of_a_clean_checkout_holds_the_experiments_and_copies_them_outside_the_repository(tmp_path):
    """Built as pip builds it from the working tree (tracked and untracked files, not ignored ones),
    installed apart, and run from a folder outside the repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    source = tmp_path / "source"
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("gptkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [*SHIPPED, *(ROOT / "experiments" / "data").iterdir()]:
        assert f"gptkit/{path.relative_to(ROOT).as_posix()}" in names, path  # experiments/x -> gptkit/experiments/x

    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, capture_output=True, timeout=600)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    def gptkit(*args):
        return subprocess.run([sys.executable, "-m", "gptkit", *args], cwd=outside, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import gptkit.shipped as s; print(s.folder('experiments'))"], cwd=outside, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(tmp_path / "site" / "gptkit" / "experiments")  # the installed copy, not this checkout's
    assert gptkit("experiments").stdout.count("\n  ") == len(SHIPPED)
    result = gptkit("experiments", "copy", "instruct_medium")
    assert result.returncode == 0 and result.stdout == f"wrote {outside / 'instruct_medium.toml'}\n", result.stderr
    result = gptkit("config", "validate", "instruct_medium.toml")
    assert result.returncode == 0 and result.stdout == "instruct_medium.toml: ok\n", result.stderr
