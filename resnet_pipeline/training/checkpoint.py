"""Atomic checkpoints: keep the last N and the best on validation error.

Checkpoints live in a local (or shared, e.g. NFS) folder, or under an object-store URI
(``s3://bucket/prefix``, ``gs://...``; anything ``pyarrow.fs.FileSystem.from_uri`` opens, with the
store's usual credentials, e.g. ``AWS_*`` variables and ``AWS_ENDPOINT_URL`` for S3-compatible
stores). Either way a checkpoint appears complete or not at all: in a folder it is written to a
temporary file, flushed to disk, then renamed over its final name (a rename within one filesystem is
atomic); in an object store it is one upload, which the store publishes only once complete. A crash
or a full disk mid-write leaves the previous checkpoints untouched. pyarrow is imported only for URIs.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/parts`` for a folder (a Path) or a URI (a str; its query, if any, stays at the end)."""
    if not is_uri(base):
        return Path(base).joinpath(*parts)
    head, sep, query = str(base).partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


# User info at the start of a URI's authority: "key:secret@" (the secret may hold an unescaped "/")
# or "user@".
_USERINFO = re.compile(r"[^/?@]*:[^?@]*@|[^/?@]*@")


def display(location: str | Path) -> str:
    """``location`` for messages and logs: a URI without credentials (user info) or query."""
    if not is_uri(location):
        return str(location)
    scheme, _, rest = str(location).partition("://")
    if m := _USERINFO.match(rest):
        rest = rest[m.end():]
    return f"{scheme}://{rest.partition('?')[0]}"


def credentials_in(uri: str) -> bool:
    """Whether a URI carries secrets (user info, or pyarrow's access_key/secret_key/session_token)."""
    from urllib.parse import parse_qs

    rest = str(uri).partition("://")[2]
    return bool(_USERINFO.match(rest)) or bool(
        {"access_key", "secret_key", "session_token"} & set(parse_qs(rest.partition("?")[2])))


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


def _serialize(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialise fully in memory first: a failure here touches no file
    return buf.getvalue()


class _Folder:
    """Files of one folder on a local or shared filesystem."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def names(self) -> list[str]:
        return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / name, data)

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class _ObjectPrefix:
    """Objects under one prefix of an object store, through pyarrow's filesystems."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)

    def names(self) -> list[str]:
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return [PurePosixPath(i.path).name for i in infos if i.type == pyarrow.fs.FileType.File]

    def read(self, name: str) -> bytes:
        import pyarrow.fs

        key = f"{self.root}/{name}"
        if self.fs.get_file_info(key).type != pyarrow.fs.FileType.File:
            raise FileNotFoundError(key)
        with self.fs.open_input_stream(key) as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        with self.fs.open_output_stream(f"{self.root}/{name}") as f:  # published on close, whole
            f.write(data)

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(f"{self.root}/{name}")
        except FileNotFoundError:
            pass


def open_store(location: str | Path) -> _Folder | _ObjectPrefix:
    """The files of a folder, or the objects under a URI, behind one small interface."""
    return _ObjectPrefix(str(location)) if is_uri(location) else _Folder(location)


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
            data = _serialize(state)
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


def _load(store: _Folder | _ObjectPrefix, name: str, path: str | Path,
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
