"""The demo and ImageNet DVC pipelines, run for real with `dvc repro` in a temporary copy of the
repository (conftest's `demo_repo`). A changed training parameter, and a sweep stage interrupted and
re-run, are in tests/test_reliability.py (on the same copy, after these)."""

from __future__ import annotations

import json
import subprocess
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


def test_plots_draw_and_each_stage_follows_its_own_inputs(demo_repo: Path, first_repro: str) -> None:
    shown = json.loads(_dvc(demo_repo, "plots", "show", "--json", stdout_only=True))
    base = "plots/demo/evaluation"  # (the other pipelines have not run: their plots are missing)
    assert not [e for e in shown.get("errors", []) if e["name"].startswith(base)], shown["errors"]
    plots = shown["data"]
    assert {f"{base}/figure6.png", f"{base}/figure7.png"} <= set(plots)
    by_kind = {kind: [p for name, p in plots.items() if name.startswith(f"{base}/{kind}/")]
               for kind in ("runs", "confusion")}
    # two trials: a learning-curve and a confusion PNG each, and a confusion matrix's data
    assert [len(by_kind[k]) for k in ("runs", "confusion")] == [4, 2], list(plots)
    assert all(p[0]["type"] == "image" for p in by_kind["runs"])
    # One chart per quantity with both runs overlaid: error against iteration, labelled axes, only the
    # points each run logged (no blank cell drawn as zero).
    for quantity in ("Training error", "Validation error"):
        (chart,) = [p for name, p in plots.items() if f"{quantity}, every run (demo)" in name]
        content = chart[0]["content"]
        assert content["encoding"]["x"]["field"] == "iteration" and content["encoding"]["color"]["field"] == "run"
        assert content["encoding"]["y"]["title"].endswith("error (fraction)")
        values = content["data"]["values"]
        assert {v["run"] for v in values} == {"plain8-s0", "resnet8-A-s0"}
        assert all(v[content["encoding"]["y"]["field"]] not in ("", None) for v in values)
    for p in by_kind["confusion"]:  # every class on both axes, zero counts included
        content = p[0]["content"]
        assert content["spec"]["encoding"]["x"]["field"] == "predicted"
        assert len(content["data"]["values"]) == 4 * 4
    # The metrics DVC compares across commits and experiments are for git (cache: false), not ignored by it.
    ignored = subprocess.run(["git", "check-ignore", "-q", "metrics/demo/evaluation.json"], cwd=demo_repo)
    assert ignored.returncode == 1

    def stale() -> set[str]:
        return set(json.loads(_dvc(demo_repo, "status", "--json", "pipelines/demo/dvc.yaml", stdout_only=True)))

    params, root = demo_repo / "pipelines/demo/params.yaml", demo_repo / "params.yaml"
    loader = demo_repo / "resnet_pipeline/data/loader.py"
    before = params.read_text(), loader.read_text(), root.read_text()
    try:
        # A key of the root's params: the stages that read that key (evaluate does not read evaluate.reports).
        root.write_text(before[2].replace("reports: reports", "reports: other-reports"))
        assert stale() == {"pipelines/demo/dvc.yaml:report"}
        root.write_text(before[2])
        # A key added to the pipeline's own params (as `dvc exp run -S` adds one): the stages that read its section.
        params.write_text(before[0].replace("\ntrain:\n", "\ntrain:\n  lr: 0.2\n", 1))
        assert stale() == {"pipelines/demo/dvc.yaml:sweep", "pipelines/demo/dvc.yaml:evaluate"}
        params.write_text(before[0])
        loader.write_text(before[1] + "\n# changed\n")  # the loaders shape training and evaluation, not prepare
        assert stale() == {"pipelines/demo/dvc.yaml:sweep", "pipelines/demo/dvc.yaml:evaluate"}
    finally:
        params.write_text(before[0])
        loader.write_text(before[1])
        root.write_text(before[2])
    assert stale() == set()


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


def test_cifar10_short_pipeline_structure(demo_repo: Path) -> None:
    """pipelines/cifar10-short (docs/results.md): the committed params are the paper's recipe at 1/32 of
    its schedule on Figure 1's nets; on a tiny archive in the layout of the real one and a few
    iterations, `dvc repro` runs its four stages and writes its outputs, and the degradation check
    compares the curves over the second half of the run."""
    from resnet_pipeline.config import PROJECT_ROOT, load_params

    committed = load_params(PROJECT_ROOT / "pipelines/cifar10-short/params.yaml")  # with the root's keys
    train, sweep = committed["train"], committed["sweep"]
    assert (train["iterations"], train["milestones"], train["batch_size"], train["lr"]) == (2000, [1000, 1500], 128, 0.1)
    assert (train["momentum"], train["weight_decay"], train["eval_every"]) == (0.9, 0.0001, 250)
    assert committed["data"]["val_fraction"] == 0.1 and committed["data"]["dataset"] == "cifar10"
    assert (sweep["depths"], sweep["shortcuts"]) == ([20, 56], ["plain", "A"])
    assert committed["evaluate"]["degradation_basis"] == "second_half"

    out = _dvc(demo_repo, "repro", "pipelines/cifar10-short/dvc.yaml")
    for stage in ("prepare", "sweep", "evaluate", "report"):
        assert f"Running stage 'pipelines/cifar10-short/dvc.yaml:{stage}'" in out
    manifest = json.loads((demo_repo / "data/prepared/cifar10-short/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 60 and manifest["splits"]["test"]["count"] == 20
    metrics = json.loads((demo_repo / "metrics/cifar10-short/sweep/metrics.json").read_text())
    assert set(metrics) == {"plain-20", "plain-56", "A-20", "A-56"}
    details = json.loads((demo_repo / "metrics/cifar10-short/evaluation/summary.json").read_text())
    (check,) = details["degradation"]
    assert check["basis"] == "second_half" and "second half of the run" in check["answer"]
    assert (demo_repo / "plots/cifar10-short/evaluation/figure6.png").is_file()
    assert (demo_repo / "reports/cifar10-short/report.md").is_file()


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "pipelines/demo/dvc.yaml", "pipelines/imagenet/dvc.yaml",
                                      "pipelines/cifar10-short/dvc.yaml"])
def test_the_sweep_stage_declares_the_folder_its_checkpoints_go_to(pipeline: str) -> None:
    """The sweep stage's persisted out is where the trials write: `train.storage_path: auto` (the
    root params) is the CLI's to resolve, not DVC's, so a stage must not declare the literal `auto`
    but the folder it resolves to, or pass that folder to the command."""
    import re

    import yaml

    from resnet_pipeline.config import PROJECT_ROOT, load_params
    from resnet_pipeline.training.config import TrainConfig

    path = PROJECT_ROOT / pipeline
    params = load_params(path.parent / "params.yaml")
    stage = yaml.safe_load(path.read_text())["stages"]["sweep"]

    def resolve(text: str) -> str:
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(params[m[1]][m[2]]), text)

    persisted = [resolve(next(iter(o))) for o in stage["outs"] if isinstance(o, dict)
                 and next(iter(o.values())).get("persist")]
    cmd = resolve(stage["cmd"])
    flag = re.search(r"--storage-path (\S+)", cmd)
    train = TrainConfig(storage_path=flag[1] if flag else params["train"]["storage_path"])
    expected = train.for_data(params["data"]["out"]).storage_path  # relative to the stage's wdir (the root)
    assert persisted == [expected] and "auto" not in persisted, (persisted, expected)


@pytest.mark.parametrize("name", ["demo", "imagenet", "cifar10-short"])
def test_each_stage_tracks_the_pipelines_own_params_file(name: str) -> None:
    """A pipeline's params.yaml extends the root's (`load_params`), which DVC does not know: so each
    stage tracks its keys in the root's file, and whole the sections of those keys in the pipeline's
    file. Every such section must be in that file (DVC refuses a missing one), so that a key set or
    added there (`dvc exp run -S`) re-runs the stages that read it."""
    import yaml

    from resnet_pipeline.config import PROJECT_ROOT

    folder = PROJECT_ROOT / "pipelines" / name
    own = yaml.safe_load((folder / "params.yaml").read_text())
    for stage, spec in yaml.safe_load((folder / "dvc.yaml").read_text())["stages"].items():
        files = {next(iter(entry)): next(iter(entry.values())) for entry in spec["params"]}
        assert set(files) == {"params.yaml", f"pipelines/{name}/params.yaml"}, (stage, files)
        sections = list(dict.fromkeys(key.partition(".")[0] for key in files["params.yaml"]))
        assert files[f"pipelines/{name}/params.yaml"] == sections, stage
        assert all(isinstance(own.get(s), dict) for s in sections), (stage, sections, sorted(own))
