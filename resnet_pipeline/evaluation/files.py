"""Outputs that appear complete or not at all: build in a temporary sibling folder, then rename."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; on success it replaces ``dest``.

    A rename within one filesystem is atomic; the previous ``dest`` is moved aside first and
    deleted only after the new one is in place. On an exception nothing of the new folder remains
    and ``dest`` is untouched.
    """
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary folder
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, briefly, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``path`` through a temporary file in its folder and a rename, with ordinary permissions."""
    from resnet_pipeline.training.checkpoint import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    os.chmod(path, 0o666 & ~_umask())  # mkstemp's 0600 would hide a metrics file from other users
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def safe_name(name: str) -> str:
    """A file name from a run name: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "run"


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    """A small CSV (DVC plots data); None becomes an empty field."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
