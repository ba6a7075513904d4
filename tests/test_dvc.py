"""The demo DVC pipeline, run for real with `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resnet_pipeline.config import PROJECT_ROOT

from conftest import _write_colour_classes


def _copy_repo(dest: Path) -> None:
    """The project's files as a fresh clone would have them (tracked + untracked, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=test@example.com", "-c", "user.name=test", *args], cwd=repo,
                   check=True, capture_output=True)


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    """A copy of the repository whose demo params are shrunk to seconds per trial, on easy data."""
    repo = tmp_path_factory.mktemp("repo")
    _copy_repo(repo)
    source = tmp_path_factory.mktemp("colours")
    _write_colour_classes(source, {"train": 64, "test": 16})
    params_path = repo / "pipelines/demo/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(dataset="imagefolder", source=str(source), val_fraction=0.25)
    params["train"].update(iterations=40, batch_size=32, milestones=[1000], log_every=10, eval_every=20,
                           checkpoint_every=20)
    params["sweep"].update(depths=[8], shortcuts=["plain", "A"])
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "test copy")
    return repo


@pytest.fixture(scope="module")
def first_repro(demo_repo: Path) -> str:
    return _dvc(demo_repo, "repro", "pipelines/demo/dvc.yaml")


def test_demo_pipeline_runs_and_learns(demo_repo: Path, first_repro: str) -> None:
    for stage in ("prepare", "sweep"):
        assert f"Running stage 'pipelines/demo/dvc.yaml:{stage}'" in first_repro
    metrics = json.loads((demo_repo / "metrics/demo/sweep/metrics.json").read_text())
    assert set(metrics) == {"plain-8", "A-8"}
    for net in metrics.values():
        assert net["test_error_mean"] < 0.5, metrics  # 4 classes: chance is 75% error
    assert (demo_repo / "mlflow.db").is_file() and (demo_repo / "results/demo").is_dir()
    shown = _dvc(demo_repo, "metrics", "show")
    assert "metrics/demo/sweep/metrics.json" in shown and "A-8.test_error_mean" in shown, shown


def test_second_repro_runs_nothing(demo_repo: Path, first_repro: str) -> None:
    out = _dvc(demo_repo, "repro", "pipelines/demo/dvc.yaml")
    assert "Running stage" not in out, out


def test_changed_training_param_reruns_only_what_depends_on_it(demo_repo: Path, first_repro: str) -> None:
    params_path = demo_repo / "pipelines/demo/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["lr"] = 0.05
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(demo_repo, "repro", "pipelines/demo/dvc.yaml")
    assert "Running stage 'pipelines/demo/dvc.yaml:sweep'" in out
    assert "Running stage 'pipelines/demo/dvc.yaml:prepare'" not in out
    summary = json.loads((demo_repo / "metrics/demo/sweep/summary.json").read_text())
    assert all(r["status"] == "FINISHED" for r in summary["trials"])
    # New runs for the new lr, not the old ones reused.
    assert "4 trials" not in out and "2 already finished" not in out
