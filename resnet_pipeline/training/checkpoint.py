"""Atomic checkpoints: keep the last N and the best on validation error.

Checkpoints live in a folder or under an object-store URI (`resnet_pipeline.storage`). Either way a checkpoint appears
complete or not at all, so a crash or a full disk mid-write leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from resnet_pipeline.storage import Folder, ObjectPrefix, display, is_uri, join, open_store

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


class CheckpointManager:
    """Checkpoints of one run in ``directory`` (a folder or a URI): ``ckpt_<iteration>.pt``, ``best.pt``."""

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        self.directory = directory if is_uri(directory) else Path(directory)
        self.keep_last = keep_last
        self.store = open_store(self.directory)

    def iterations(self) -> list[int]:
        return sorted(int(m.group(1)) for name in self.store.names() if (m := _NAME.match(name)))

    def path(self, iteration: int) -> str | Path:
        return join(self.directory, _name(iteration))

    @property
    def best_path(self) -> str | Path:
        return join(self.directory, BEST)

    def best_error(self) -> float | None:
        try:
            return json.loads(self.store.read("best.json"))["val_error"]
        except FileNotFoundError:
            return None

    def save(self, state: dict[str, Any], iteration: int, val_error: float | None = None) -> str | Path:
        """Write the checkpoint of ``iteration``; also as best.pt when ``val_error`` is a new best."""
        try:
            buf = io.BytesIO()
            torch.save(state, buf)  # serialise fully in memory first: a failure here touches no file
            data = buf.getvalue()
            self.store.write(_name(iteration), data)
            best = self.best_error()
            if val_error is not None and (best is None or val_error < best):
                self.store.write(BEST, data)
                self.store.write("best.json", json.dumps({"iteration": iteration, "val_error": val_error}).encode())
        except OSError as exc:
            latest = self.latest()
            raise CheckpointError(
                f"cannot write checkpoint for iteration {iteration} to {display(self.directory)}: "
                f"{exc.strerror or exc}; the previous checkpoint ({display(latest) if latest else 'none'}) is intact"
            ) from exc
        for old in self.iterations()[: -self.keep_last]:
            self.store.delete(_name(old))
        return self.path(iteration)

    def latest(self) -> str | Path | None:
        its = self.iterations()
        return self.path(its[-1]) if its else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint, or None. An unreadable one raises (it is never skipped silently)."""
        its = self.iterations()
        return _load(self.store, _name(its[-1]), self.path(its[-1]), map_location) if its else None

    def mark_once(self, name: str) -> bool:
        """True, and ``name`` created beside the checkpoints, unless it already existed."""
        if name in self.store.names():
            return False
        self.store.write(name, b"")
        return True


def _name(iteration: int) -> str:
    return f"ckpt_{iteration:08d}.pt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if is_uri(path):
        head, sep, query = str(path).partition("?")
        parent, _, name = head.rpartition("/")
        folder: str | Path = parent + sep + query
    else:
        folder, name = Path(path).parent, Path(path).name
    return _load(open_store(folder), name, path, map_location)


def _load(store: Folder | ObjectPrefix, name: str, path: str | Path,
          map_location: str | torch.device) -> dict[str, Any]:
    try:
        data = store.read(name)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {display(path)}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {display(path)} is unreadable ({exc})") from exc
    try:
        # Our own files only (never a downloaded one): they hold numpy's RNG state, which
        # weights_only=True refuses.
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {display(path)} is unreadable ({exc}); delete it to resume from an older "
                              "one") from exc
