"""Atomic writes (resnet_pipeline.files): whole or absent, with the umask's permissions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from resnet_pipeline.files import _umask, atomic_dir, write_bytes_atomic


def test_a_written_file_has_the_umasks_permissions_and_no_temporary_file_remains(tmp_path):
    path = write_bytes_atomic(tmp_path / "sub" / "summary.json", b"{}")
    assert path.read_bytes() == b"{}"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # mkstemp alone would leave 0600
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "new" / "deeper" / "out"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the parents it created are gone too


def test_atomic_dir_removes_what_a_killed_run_left_and_keeps_a_live_ones(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / f".out.tmp-{dead}").mkdir()
    (tmp_path / f".out.old-{dead}").mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}"
    live.mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
