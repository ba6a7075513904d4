"""Atomic checkpoints: keep the last N and the best on validation error.

A checkpoint file appears complete or not at all: it is written to a temporary file in the same
folder, flushed to disk, then renamed over its final name (a rename within one filesystem is
atomic). A crash or a full disk mid-write leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialise fully in memory first: a failure here touches no file
    atomic_write_bytes(path, buf.getvalue())


class CheckpointManager:
    """Checkpoints of one run in ``directory``: ``ckpt_<iteration>.pt`` and ``best.pt``."""

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def iterations(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def path(self, iteration: int) -> Path:
        return self.directory / f"ckpt_{iteration:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / BEST

    def best_error(self) -> float | None:
        meta = self.directory / "best.json"
        return json.loads(meta.read_text())["val_error"] if meta.is_file() else None

    def save(self, state: dict[str, Any], iteration: int, val_error: float | None = None) -> Path:
        """Write the checkpoint of ``iteration``; also as best.pt when ``val_error`` is a new best."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.path(iteration)
            atomic_torch_save(state, path)
            best = self.best_error()
            if val_error is not None and (best is None or val_error < best):
                atomic_torch_save(state, self.best_path)
                atomic_write_bytes(self.directory / "best.json",
                                   json.dumps({"iteration": iteration, "val_error": val_error}).encode())
        except OSError as exc:
            latest = self.latest()
            raise CheckpointError(
                f"cannot write checkpoint for iteration {iteration} to {self.directory}: {exc.strerror or exc}; "
                f"the previous checkpoint ({latest or 'none'}) is intact"
            ) from exc
        for old in self.iterations()[: -self.keep_last]:
            self.path(old).unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        its = self.iterations()
        return self.path(its[-1]) if its else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint, or None. An unreadable one raises (it is never skipped silently)."""
        latest = self.latest()
        return load_checkpoint(latest, map_location) if latest else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        # Our own files only (never a downloaded one): they hold numpy's RNG state, which
        # weights_only=True refuses.
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to resume from an older one") from exc
