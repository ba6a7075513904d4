"""Where files live: a local (or shared, e.g. NFS) folder, or an object-store prefix.

A location is a folder (a Path) or a URI (``s3://bucket/prefix``, ``gs://...``; anything
``pyarrow.fs.FileSystem.from_uri`` opens, with the store's usual credentials, e.g. ``AWS_*`` variables and
``AWS_ENDPOINT_URL`` for S3-compatible stores). A write appears complete or not at all: in a folder through a
temporary file and a rename, in an object store as one upload, which the store publishes only once complete.
pyarrow is imported only for URIs.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs

from resnet_pipeline.files import write_bytes_atomic


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/parts`` for a folder (a Path) or a URI (a str; its query, if any, stays at the end)."""
    if not is_uri(base):
        return Path(base).joinpath(*parts)
    head, sep, query = str(base).partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


# User info at the start of a URI's authority: "key:secret@" (the secret may hold an unescaped "/") or "user@".
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
    rest = str(uri).partition("://")[2]
    return bool(_USERINFO.match(rest)) or bool(
        {"access_key", "secret_key", "session_token"} & set(parse_qs(rest.partition("?")[2])))


class Folder:
    """Files of one folder on a local or shared filesystem."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def names(self) -> list[str]:
        return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        write_bytes_atomic(self.path / name, data)  # creates the folder

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class ObjectPrefix:
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
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(f"{self.root}/{name}")


def open_store(location: str | Path) -> Folder | ObjectPrefix:
    """The files of a folder, or the objects under a URI, behind one small interface."""
    return ObjectPrefix(str(location)) if is_uri(location) else Folder(location)
