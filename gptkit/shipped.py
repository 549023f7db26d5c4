"""The experiments and sweeps that come with gptkit: listed by `gptkit experiments`, written out for
editing by `gptkit experiments copy NAME [DEST]`.

There is one copy of each file, the repository's experiments/ and sweeps/ folders, which the README
and the tests use by those paths. pyproject.toml maps them into the wheel as package data
(gptkit/experiments, gptkit/sweeps), so a non-editable install has them beside this module; a
checkout (an editable install) has them at the repository root, beside the package.

A copy keeps working where it lands: the files an experiment names by a path relative to itself
(`data/instruction-data.json`) are copied along to the same place relative to the copy, and a
sweep's `program` experiment is copied beside the sweep, its `program:` line rewritten to match.
Nothing is overwritten: a file already there is an error naming it (a data file already there
with the same bytes, from an earlier copy, is kept as it is).
"""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path
from typing import Any

import attrs

from gptkit.config import read_toml
from gptkit.errors import GptkitError
from gptkit.files import atomic_path, atomic_write_text

KINDS = {"experiments": ("*.toml",), "sweeps": ("*.yaml", "*.yml", "*.toml")}
PROGRAM = re.compile(r"^program:[ \t]*(['\"]?)(.+?)\1[ \t]*$", re.MULTILINE)  # a sweep file's `program:` line


@attrs.frozen
class Shipped:
    name: str  # the file name without its suffix
    kind: str  # experiments | sweeps
    path: Path

    @property
    def description(self) -> str:
        """The file's first comment line: each shipped file starts with one saying what it is."""
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
        return ""


def folder(kind: str) -> Path:
    """Where the shipped `kind` files are: inside the installed package, else in the checkout."""
    package = Path(__file__).resolve().parent
    return package / kind if (package / kind).is_dir() else package.parent / kind


def shipped() -> list[Shipped]:
    """Every shipped experiment and sweep, by kind, then name."""
    found = []
    for kind, patterns in KINDS.items():
        paths = sorted({p for pattern in patterns for p in folder(kind).glob(pattern)})
        found += [Shipped(p.stem, kind, p) for p in paths]
    return found


def find(name: str) -> Shipped:
    """The shipped file `name` (with or without its suffix); else an error listing the names and the nearest."""
    files = shipped()
    matches = [s for s in files if name in (s.name, s.path.name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise GptkitError(f"{name!r} names several shipped files ({', '.join(s.path.name for s in matches)}); give the file name")
    names = [s.name for s in files]
    near = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise GptkitError(f"no shipped experiment or sweep {name!r} (shipped: {', '.join(names)}){hint}")


def relative_files(experiment: Path) -> list[str]:
    """The files an experiment names by a path relative to its own folder, inside it (the strings of
    the TOML that are such paths: a dataset, a tokenizer folder's files, an eval text)."""
    base = experiment.parent

    def strings(value: Any):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    found = []
    for text in strings(read_toml(experiment)):
        path = Path(text)
        if "://" not in text and not path.is_absolute() and ".." not in path.parts and (base / path).is_file():
            found.append(path.as_posix())
    return sorted(set(found))


def copy_plan(item: Shipped, target: Path) -> list[tuple[Path, Path | str]]:
    """(destination, source file or text) for the copy of `item` at `target` and what it needs."""
    plan: list[tuple[Path, Path | str]] = []
    experiment, text = item.path, None
    if item.kind == "sweeps":
        text = item.path.read_text(encoding="utf-8")
        match = PROGRAM.search(text)
        program = (item.path.parent / match[2]).resolve() if match else None
        if program is None or not program.is_file():
            plan.append((target, item.path))
            return plan
        text = text[: match.start(2)] + program.name + text[match.end(2) :]
        plan.append((target, text))
        target, experiment = target.parent / program.name, program
    plan.append((target, experiment))
    plan += [(target.parent / rel, experiment.parent / rel) for rel in relative_files(experiment)]
    return plan


def copy(name: str, dest: str | Path | None = None) -> list[Path]:
    """Write the shipped file `name` to `dest` (a file name, or a folder to put it in; default: the
    working directory), with the files it needs; returns the paths written. Checks every
    destination before writing any."""
    item = find(name)
    target = Path(dest) if dest is not None else Path.cwd()
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", "\\"))):
        target = target / item.path.name
    plan = copy_plan(item, target)
    written = []
    for i, (path, source) in enumerate(plan):
        if path.exists():
            same = i > 0 and isinstance(source, Path) and path.is_file() and path.read_bytes() == source.read_bytes()
            if not same:
                raise GptkitError(f"{path}: already exists; gptkit experiments copy does not overwrite (remove it, or give another DEST)")
        else:
            written.append((path, source))
    for path, source in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            with atomic_path(path) as tmp:
                shutil.copyfile(source, tmp)
        else:
            atomic_write_text(path, source)
    return [path for path, _ in written]
