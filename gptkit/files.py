"""Files written so that a crash or a full disk never leaves a half-written one under its final name,
and text read so that bad bytes are an error naming the file, line and byte."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gptkit.errors import GptkitError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place; an old `final` is removed only after."""
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def decode_utf8(data: bytes, path: str | Path, offset: int = 0, line: int = 1) -> str:
    """UTF-8 text; bad bytes are an error naming the file, line and byte offset (`data` starts at those)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line += data.count(b"\n", 0, exc.start)
        raise GptkitError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, byte offset {offset + exc.start}; "
            "convert it to UTF-8 (e.g. `iconv -t utf-8`)"
        ) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; an unreadable file or bad bytes are errors naming the file and where."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GptkitError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_utf8(data, path)
