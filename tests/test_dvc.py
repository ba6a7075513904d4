"""The demo and ImageNet DVC pipelines, run for real with `dvc repro` in a temporary copy of the
repository (conftest's `demo_repo`). A changed training parameter, and a sweep stage interrupted and
re-run, are in tests/test_reliability.py (on the same copy, after these)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import dvc as _dvc


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
    assert 0.0 <= row["top1_error_mean"] <= 1.0
    # Generated data of 4 classes is not ImageNet: no paper figure to stand beside it (Table 2 has 27.88).
    assert row["paper_top1_error"] is None and row["paper_note"].startswith("no paper figure")
    assert (demo_repo / "reports/imagenet-tables2-4/report.md").is_file()
