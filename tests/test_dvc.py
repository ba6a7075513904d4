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

from conftest import _write_colour_classes, write_images


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
    _shrink_imagenet(repo, tmp_path_factory.mktemp("imagenet"))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "test copy")
    return repo


def _shrink_imagenet(repo: Path, source: Path) -> None:
    """An ImageNet-layout folder (train/ and val/ by class, JPEG and PNG of mixed sizes over 64 px),
    and the imagenet pipeline's params cut to one tiny net: the same stages, crops of 32 px."""
    sizes = [(96, 72), (80, 120), (72, 72)]
    for c, size in enumerate(sizes):
        for s, (split, count) in enumerate((("train", 24), ("val", 8))):
            write_images(source / split / f"n0000{c}", count, size=size, fmt="JPEG" if c % 2 == 0 else "PNG",
                         seed=100 * s + c, prefix=split)
    params_path = repo / "pipelines/imagenet/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(source=str(source), num_threads=2, crop_size=32, resize_range=[40, 56], eval_resize=40)
    params["train"].update(iterations=12, batch_size=16, workers=1, log_every=4, eval_every=6, checkpoint_every=6,
                           plateau_patience=1)
    params["sweep"].update(depths=[18], shortcuts=["A"], include=[])  # Table 2: ResNet-18 (option A)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


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
    for stage in ("sweep", "evaluate", "report"):
        assert f"Running stage 'pipelines/demo/dvc.yaml:{stage}'" in out
    assert "Running stage 'pipelines/demo/dvc.yaml:prepare'" not in out
    summary = json.loads((demo_repo / "metrics/demo/sweep/summary.json").read_text())
    assert all(r["status"] == "FINISHED" for r in summary["trials"])
    # New runs for the new lr, not the old ones reused.
    assert "4 trials" not in out and "2 already finished" not in out


def test_imagenet_pipeline_runs_on_generated_data(demo_repo: Path) -> None:
    out = _dvc(demo_repo, "repro", "pipelines/imagenet/dvc.yaml")
    for stage in ("prepare", "sweep", "evaluate", "report"):
        assert f"Running stage 'pipelines/imagenet/dvc.yaml:{stage}'" in out
    manifest = json.loads((demo_repo / "data/prepared/imagenet/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 72 and manifest["splits"]["val"]["count"] == 24
    metrics = json.loads((demo_repo / "metrics/imagenet/sweep/metrics.json").read_text())
    assert set(metrics) == {"A-18"}
    details = json.loads((demo_repo / "metrics/imagenet/evaluation/summary.json").read_text())
    assert details["compared"] == "val_10crop"  # Sec. 3.4: 10-crop testing on ImageNet-kind data
    (row,) = details["table"]
    assert (row["depth"], row["shortcut"], row["runs"]) == (18, "A", 1)
    assert 0.0 <= row["top1_error_mean"] <= 1.0 and row["paper_top1_error"] == pytest.approx(0.2788)
    assert (demo_repo / "reports/imagenet-tables2-4/report.md").is_file()
