"""Acquire a data source: download a URL, unpack an archive, find the image-folder layout.

Nothing here modifies the source: archives are unpacked into a scratch folder that the caller owns (inside the
temporary output folder), folders are only read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from resnet_pipeline.data.config import DataError

SPLITS = ("train", "val", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
# Folders that archivers add and that are never data.
IGNORED_NAMES = {"__MACOSX"}

OFFLINE_HINT = (
    "If this machine is offline or the URL is blocked, point data.source at a local copy: "
    "`dvc exp run -S data.source=/path/to/cifar10-jpeg.tar.gz` or "
    "`python cli.py prepare --source /path/to/cifar-10-python.tar.gz` "
    "(the official tarball, a folder, or an image-folder archive)."
)


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "ftp")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_reachable(url: str, timeout_s: float) -> None:
    """Open ``url`` with a short timeout, in a thread with a hard deadline: the thread guards against what a socket
    timeout does not cover, a DNS lookup that hangs while the machine is offline."""
    error: list[BaseException] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "resnet-pipeline"})
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except BaseException as exc:  # reported to the caller below
            error.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    if thread.is_alive():
        error.append(TimeoutError(f"no answer within {timeout_s:g} s"))
    if error:
        exc = error[0]
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else (
            getattr(exc, "reason", None) or exc)
        raise DataError(f"data.source: cannot download {url}: {reason}. {OFFLINE_HINT}")


def download(url: str, download_dir: Path, *, md5: str | None, timeout_s: float) -> Path:
    """Download ``url`` into ``download_dir`` (kept as a cache) and verify its md5 when known.

    Fails within about ``timeout_s`` seconds when the machine is offline, with a hint on how to use a local copy
    instead. A partial or corrupt download is deleted.
    """
    from torchvision.datasets.utils import check_integrity, download_url

    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = download_dir / name
    if target.is_file() and (md5 is None or check_integrity(str(target), md5)):
        return target
    _check_reachable(url, timeout_s)
    download_dir.mkdir(parents=True, exist_ok=True)
    partial = download_dir / f".{name}.part-{os.getpid()}"
    previous = socket.getdefaulttimeout()
    # torchvision's download opens its connections without a timeout; the default applies.
    socket.setdefaulttimeout(timeout_s)
    try:
        download_url(url, str(download_dir), filename=partial.name, md5=None)
        if md5 is not None and not check_integrity(str(partial), md5):
            raise DataError(
                f"data.source: checksum mismatch for {url}: md5 of the download is not {md5} "
                "(a corrupt or different file). Delete it and retry, or use a verified local copy.")
        os.replace(partial, target)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"data.source: download of {url} failed: {exc}. {OFFLINE_HINT}") from exc
    finally:
        socket.setdefaulttimeout(previous)
        partial.unlink(missing_ok=True)
    return target


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path) -> list[str]:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip into ``dest``; raise DataError if it is unreadable or truncated.

    Only regular files and folders are unpacked, and only inside ``dest``: members with absolute paths or ``..``,
    links and special files are skipped; their names are returned."""
    dest.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def unsafe(name: str) -> bool:
        return name.startswith(("/", "\\")) or ".." in PurePosixPath(name.replace("\\", "/")).parts

    def keep(member: tarfile.TarInfo, _path: str) -> tarfile.TarInfo | None:
        # Cheaper than tarfile's "data" filter (no realpath per member, which costs minutes on
        # ImageNet-sized archives) and as strict for what we unpack.
        if not (member.isfile() or member.isdir()) or unsafe(member.name):
            skipped.append(member.name)
            return None
        return member.replace(mode=0o755 if member.isdir() else 0o644, uid=None, gid=None, uname=None, gname=None,
                              deep=False)

    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if "\\" in info.filename and "/" not in info.filename:
                        info.filename = info.filename.replace("\\", "/")  # written by older Windows tools
                    if unsafe(info.filename):
                        skipped.append(info.filename)
                    else:
                        zf.extract(info, dest)
        else:
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(dest, filter=keep)
                # A tar ends with zero blocks. One cut between two members reads as complete (tarfile stops at
                # the end of the data without a word): whole classes or splits would vanish.
                tf.fileobj.seek(tf.offset)
                end = tf.fileobj.read(tarfile.BLOCKSIZE)
                if len(end) < tarfile.BLOCKSIZE or any(end):
                    raise EOFError(f"unexpected end of data after {len(tf.getmembers())} members "
                                   "(no end-of-archive marker)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError,
            RuntimeError, NotImplementedError) as exc:  # zip: encrypted members, unsupported compression
        kind = "truncated" if isinstance(exc, EOFError) or "unexpected end" in str(exc).lower() else "unreadable"
        raise DataError(
            f"data.source: archive {archive} is {kind}: {exc}. Expected a complete .tar, .tar.gz, "
            ".tgz or .zip file; re-copy or re-download it.") from exc
    return skipped


def visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_NAMES)


def find_cifar_batches(root: Path) -> Path | None:
    """The folder holding CIFAR-10's python batches (``data_batch_1`` ...): ``root``, its cifar-10-batches-py/, or
    that of its one top folder."""
    children = [c for c in visible_children(root) if c.is_dir()] if root.is_dir() else []
    tops = children if len(children) == 1 else []
    for candidate in (root, root / "cifar-10-batches-py", *(c / "cifar-10-batches-py" for c in tops)):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def find_image_root(root: Path, source: str) -> Path:
    """The folder that holds ``train/`` (``root`` itself, or its one wrapping top folder)."""
    if (root / "train").is_dir():
        return root
    children = visible_children(root)
    tops = [c for c in children if c.is_dir() and (c / "train").is_dir()]
    if len(tops) == 1 and all(c.is_file() for c in children if c != tops[0]):
        return tops[0]  # one top folder; files beside it (a LICENSE, a README) are listed, not data
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in children[:10]) or "nothing"
    raise DataError(
        f"data.source: {source} has the wrong layout: expected train/<class>/<images> (and val/ "
        f"or test/ the same way), optionally inside one top folder; found: {found}")


def cifar_batches_to_folders(batches: Path, dest: Path, source: str | None = None) -> None:
    """Write CIFAR-10's python batches as lossless PNGs ``dest/{train,test}/<class>/NNNNN.png``.

    The md5 of every batch file is checked first (torchvision's list of official checksums), so a corrupt or
    different file fails here instead of training on it; the error names ``source`` (what the user gave: the
    archive, say, not the folder it was unpacked into).
    """
    from torchvision.datasets import CIFAR10

    # torchvision expects <root>/cifar-10-batches-py; give it that without touching the source.
    root = batches.parent
    if batches.name != CIFAR10.base_folder:
        root = dest / "_cifar_root"
        root.mkdir(parents=True)
        (root / CIFAR10.base_folder).symlink_to(batches.resolve(), target_is_directory=True)
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(str(root), train=train, download=False)
        except RuntimeError as exc:
            # torchvision's own message suggests download=True, which is not ours to offer.
            raise DataError(f"data.source: checksum mismatch in {source or batches}: a CIFAR-10 batch file is missing "
                            "or differs from the official release (md5 checked). Re-download it or use a verified "
                            "copy.") from exc
        for c in ds.classes:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
        for index, (pixels, target) in enumerate(zip(ds.data, ds.targets)):
            Image.fromarray(np.ascontiguousarray(pixels)).save(dest / split / ds.classes[target] / f"{index:05d}.png")
    if root != batches.parent:
        shutil.rmtree(root)
