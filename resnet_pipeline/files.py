"""Outputs that appear complete or not at all: written beside their final name, then renamed.

A rename within one filesystem is atomic, so a reader (DVC, MLflow, a user) sees the old file or folder or
the new one, never half of one; a crash or a full disk leaves the old one untouched. Files and folders get
the ordinary permissions of the umask (mkstemp's and mkdtemp's 0600/0700 would hide metrics from other users).
"""

from __future__ import annotations

import csv
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

    The previous ``dest`` is moved aside first and deleted only after the new one is in place. On an exception the
    temporary folder is removed, with any parent folder this call created, and ``dest`` is untouched. Temporary folders
    that a killed earlier run left beside ``dest`` (their names carry its PID) are removed first."""
    dest = Path(dest)
    created = [p for p in dest.parents if not p.exists()]  # innermost first
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(dest: Path) -> None:
    """Remove the temporary folders of ``atomic_dir`` that a process no longer running left beside ``dest``."""
    for entry in dest.parent.glob(f".{dest.name}.*-*"):
        kind, _, pid = entry.name.rpartition("-")
        if not pid.isdigit() or not kind.endswith((".tmp", ".old")):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


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
    """Write ``path`` through a temporary file in its folder, flushed to disk, and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def safe_name(name: str) -> str:
    """A file name from a run name: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    """A small CSV (DVC plots data); None becomes an empty field."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
