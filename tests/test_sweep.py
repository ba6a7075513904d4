"""Sweep: a real Ray Tune grid of 2 depths x 2 shortcuts on tiny data, MLflow parent/child structure, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import s3_keys
from resnet_pipeline.config import ConfigError
from resnet_pipeline.models import ModelConfig
from resnet_pipeline.sweep import SweepConfig, dry_run, plan, run_sweep
from resnet_pipeline.training import TrainConfig
from resnet_pipeline.storage import join

TRAIN = dict(iterations=20, batch_size=32, milestones=[1000], log_every=10, eval_every=20, checkpoint_every=10,
             workers=2, precision="fp32", threads_per_worker=1, experiment="test-sweep")


@pytest.fixture(scope="module")
def sweep_setup(tiny_data: Path, tmp_path_factory, ray_session) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = SweepConfig(depths=[8, 14], shortcuts=["plain", "A"], name="tiny", out=str(root / "metrics"))
    train = TrainConfig(**TRAIN, storage_path=str(root / "results"))
    summary = run_sweep(sweep, train, ModelConfig(), tiny_data, backend="dali-cpu", num_threads=2, tracking_uri=uri)
    return {"sweep": sweep, "train": train, "uri": uri, "summary": summary, "data": tiny_data}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_sweep_structure(sweep_setup: dict) -> None:
    s = sweep_setup["summary"]
    client = _client(sweep_setup["uri"])
    exp = client.get_experiment_by_name("test-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == s["parent_run_id"]]
    assert len(parents) == 1 and parents[0].info.run_id == s["parent_run_id"]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    # Names that differ in their first characters; the sweep and its digest are tags.
    assert sorted(r.info.run_name for r in children) == ["plain14-s0", "plain8-s0", "resnet14-A-s0", "resnet8-A-s0"]
    assert {(r.data.tags["sweep"], r.data.tags["config_digest"]) for r in children} == {("tiny", s["config_digest"])}
    # Params: no trial table repeated, no ImageNet-only geometry on 32-pixel runs; the parent's
    # describe what the trials share (no model.depth of a net nobody trained).
    params = children[0].data.params
    assert not [k for k in params if k.startswith("sweep_trial.") or k in ("data.crop_size", "data.resize_range")]
    assert "model.depth" not in parents[0].data.params and "model.variant" in parents[0].data.params
    # The parent's headline: the best trial by validation error, and its test error.
    best = min(s["trials"], key=lambda r: r["val_error"])
    assert parents[0].data.metrics["val/error"] == best["val_error"]
    assert parents[0].data.metrics["test/error"] == best["test_error"]
    assert parents[0].data.metrics["trials_finished"] == 4
    assert client.get_experiment_by_name("test-sweep").tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(s["parent_run_id"], "summary")}
    assert artifacts == {"summary/summary.json", "summary/summary.csv", "summary/metrics.json"}


def test_summary_matches_child_runs(sweep_setup: dict) -> None:
    s = sweep_setup["summary"]
    client = _client(sweep_setup["uri"])
    on_disk = json.loads((Path(s["out"]) / "summary.json").read_text())
    assert on_disk["trials"] == s["trials"]
    for row in s["trials"]:
        m = client.get_run(row["run_id"]).data.metrics
        assert row["train_error"] == m["train/error"]
        assert row["val_error"] == m["val/best_error"]
        assert row["test_error"] == m["test/error"]
        assert row["params"] > 0 and row["mult_adds"] > 0 and row["images_per_s"] > 0
    plain8 = next(r for r in s["trials"] if r["depth"] == 8 and r["shortcut"] == "plain")
    a8 = next(r for r in s["trials"] if r["depth"] == 8 and r["shortcut"] == "A")
    assert plain8["params"] == a8["params"]  # option A adds no parameters
    agg = {(a["depth"], a["shortcut"]): a for a in s["aggregate"]}
    assert agg[8, "A"]["seeds"] == 1 and agg[8, "A"]["test_error_mean"] == a8["test_error"]
    csv_lines = (Path(s["out"]) / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("depth,shortcut,seed,status") and len(csv_lines) == 5


def test_rerun_skips_finished_trials_and_resumes_the_rest(sweep_setup: dict, capsys) -> None:
    client = _client(sweep_setup["uri"])
    s = sweep_setup["summary"]
    interrupted = next(r for r in s["trials"] if r["depth"] == 14 and r["shortcut"] == "A")
    client.set_terminated(interrupted["run_id"], status="KILLED")  # as if Ctrl-C had stopped this trial
    again = run_sweep(sweep_setup["sweep"], sweep_setup["train"], ModelConfig(), sweep_setup["data"],
                      backend="dali-cpu", num_threads=2, tracking_uri=sweep_setup["uri"])
    assert "3 already done, 1 to run" in capsys.readouterr().out
    assert again["parent_run_id"] == s["parent_run_id"]
    children = client.search_runs([client.get_run(s["parent_run_id"]).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{s['parent_run_id']}'")
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}  # no duplicate run
    resumed = next(r for r in again["trials"] if r["run_id"] == interrupted["run_id"])
    assert resumed["status"] == "FINISHED"


def test_evaluate_takes_only_the_trials_of_the_sweeps_latest_grid(sweep_setup: dict) -> None:
    """Narrowed to one depth, the sweep reopens the same parent run (its digest leaves the grid out),
    whose children still include the other depth's runs: evaluation must not pick those up."""
    from resnet_pipeline.evaluation.runs import resolve_runs

    uri, s = sweep_setup["uri"], sweep_setup["summary"]
    narrow = SweepConfig(**{**vars(sweep_setup["sweep"]), "depths": [8]})
    again = run_sweep(narrow, sweep_setup["train"], ModelConfig(), sweep_setup["data"], backend="dali-cpu",
                      num_threads=2, tracking_uri=uri)  # both depth-8 trials are done: nothing runs
    assert again["parent_run_id"] == s["parent_run_id"] and len(again["trials"]) == 2
    resolved = resolve_runs(uri, "test-sweep", "tiny", [])
    assert sorted((r.depth, r.shortcut) for r in resolved["runs"]) == [(8, "A"), (8, "plain")]
    assert sorted(x["run_name"] for x in resolved["skipped"]) == ["plain14-s0", "resnet14-A-s0"]
    assert all("not in the sweep's current grid" in x["reason"] for x in resolved["skipped"])


@pytest.mark.parametrize("changes,match", [
    (dict(depths=[21]), r"sweep.depths: invalid depth\(s\) 21"),
    (dict(depths=[20, 18]), r"mix"),
    (dict(depths=[]), r"no depths"),
    (dict(shortcuts=["A", "D"]), r"unknown 'D'"),
    (dict(seeds=0), r"sweep.seeds"),
    (dict(include=["D-20"]), r"sweep.include: 'D-20' is not valid"),
    (dict(include=["B-fifty"]), r"sweep.include"),
    (dict(include=["B-34"]), r"mix"),
    (dict(trial_launcher="in-trial"), r"sweep.trial_launcher: in-trial runs one worker per trial, but train.workers is 2"),
    (dict(trial_launcher="threads"), r"sweep.trial_launcher: 'threads' is not valid; use one of auto, in-trial"),
    (dict(name="bob's"), r"sweep.name: \"bob's\" is not valid; use letters, digits"),  # would break MLflow's filters
    (dict(name="a/b"), r"sweep.name: 'a/b' is not valid"),
])
def test_bad_sweep_fails_before_ray(changes: dict, match: str, tmp_path: Path) -> None:
    import ray

    was_running = ray.is_initialized()
    with pytest.raises(ConfigError, match=match):
        run_sweep(SweepConfig(**{**dict(depths=[20], shortcuts=["A"]), **changes}), TrainConfig(),
                  ModelConfig(), tmp_path / "no-data", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "mlflow.db").exists()  # no run was created


def test_include_adds_nets_beyond_the_grid() -> None:
    # pipelines/imagenet: Table 2's grid, then Table 3's rows; a repeat of a grid net is dropped.
    sweep = SweepConfig(depths=[18, 34], shortcuts=["plain", "A"], include=["B-34", "C-34", "B-152", "A-34"], seeds=2)
    trials = plan(sweep, TrainConfig(seed=5))
    nets = list(dict.fromkeys((t.depth, t.shortcut) for t in trials))
    assert nets == [(18, "plain"), (18, "A"), (34, "plain"), (34, "A"), (34, "B"), (34, "C"), (152, "B")]
    assert len(trials) == 14 and {t.seed for t in trials} == {5, 6} and {t.family for t in trials} == {"imagenet"}


def test_imagenet_depths_plan_on_cifar_sized_data(tiny_data: Path) -> None:
    sweep = SweepConfig(depths=[18, 34, 50, 101, 152], shortcuts=["B"])
    trials = plan(sweep, TrainConfig())
    assert [t.family for t in trials] == ["imagenet"] * 5
    report = dry_run(sweep, TrainConfig(batch_size=32, workers=2), ModelConfig(), tiny_data, measure=False)
    # On 32x32 data the ImageNet nets get the CIFAR stem: ResNet-50's mult-adds at 32x32 with it are
    # (224/32)^2 / 16 ... i.e. about 4x fewer than at 224 with the 4x-downsampling stem, not 49x.
    r50 = next(r for r in report["trials"] if r["depth"] == 50)
    assert 0.5e9 < r50["mult_adds"] < 2e9 and r50["train_mult_adds"] == r50["mult_adds"] * 3 * 64_000 * 32


def test_asha_stops_trials_without_leaving_runs_open(tiny_data: Path, tmp_path: Path, ray_session,
                                                     s3_store: dict, capsys) -> None:
    """Whatever ASHA decides, every child run ends FINISHED or KILLED (tagged stopped_early), never RUNNING,
    and a re-run trains neither again. Storage in S3: Tune's experiment state and the trials' checkpoints
    go there."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = SweepConfig(depths=[8], shortcuts=["A"], seeds=2, name="asha", asha=True, out=str(tmp_path / "m"))
    # One worker: trials train in their Tune process (the sweep_setup grid covers Ray Train trials).
    storage = join(s3_store["uri"], "asha")
    train = TrainConfig(**{**TRAIN, "iterations": 40, "workers": 1}, storage_path=storage)
    assert sweep.in_trial(train.workers)
    summary = run_sweep(sweep, train, ModelConfig(), tiny_data, backend="dali-cpu", num_threads=2, tracking_uri=uri)
    client = _client(uri)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    children = [client.get_run(r["run_id"]) for r in summary["trials"]]
    assert len(children) == 2 and any(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert r.info.status == "FINISHED" or (r.info.status == "KILLED" and r.data.tags["stopped_early"] == "true")
    keys = s3_keys(s3_store, "results/asha/")
    for r in children:  # every trial checkpointed (checkpoint_every 10) into the bucket
        assert any(k.startswith(f"results/asha/asha-{summary['config_digest']}/{r.info.run_name}/checkpoints/ckpt_")
                   for k in keys), r.info.run_name
    assert any(k.startswith("results/asha/asha-tune-") for k in keys)  # Tune's experiment state
    assert not (tmp_path / "results").exists()
    capsys.readouterr()
    again = run_sweep(sweep, train, ModelConfig(), tiny_data, backend="dali-cpu", num_threads=2, tracking_uri=uri)
    assert "2 already done, 0 to run" in capsys.readouterr().out
    assert again["trials"] == summary["trials"] and again["incomplete"] == []


def test_killed_one_worker_trial_is_retried_by_tune_and_resumes(tiny_data: Path, tmp_path: Path,
                                                                ray_session) -> None:
    """An in-trial trial whose process is SIGKILLed mid-run is retried by Tune (train.max_failures) and
    resumes from its checkpoint: the run finishes in the same MLflow run, with the curve unbroken."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = SweepConfig(depths=[8], shortcuts=["A"], name="retry", out=str(tmp_path / "m"))
    train = TrainConfig(**{**TRAIN, "iterations": 30, "eval_every": 30, "workers": 1},
                        storage_path=str(tmp_path / "results"), inject_failure_at=15, inject_failure="sigkill",
                        max_failures=1)
    summary = run_sweep(sweep, train, ModelConfig(), tiny_data, backend="dali-cpu", num_threads=1, tracking_uri=uri)
    (trial,) = summary["trials"]
    assert summary["errors"] == [] and trial["status"] == "FINISHED"
    client = _client(uri)
    run = client.get_run(trial["run_id"])
    assert (tmp_path / "results" / f"retry-{summary['config_digest']}" / run.info.run_name / "checkpoints"
            / ".failure_injected").exists()  # it was killed
    assert [h.step for h in client.get_metric_history(trial["run_id"], "train/error")] == [10, 20, 30]
    assert len(client.search_runs([run.info.experiment_id])) == 2  # the parent and this one child, no duplicate


def test_config_digest_ignores_the_model_settings_each_trial_sets() -> None:
    """Changing model.depth (the default of `train`) must not make a sweep train everything again."""
    from resnet_pipeline.sweep import config_digest

    train, data = TrainConfig(), {"data_dir": "/data", "backend": "dali-cpu", "normalize": "per_pixel"}
    base = config_digest(train, ModelConfig(), data)
    assert config_digest(train, ModelConfig(depth=56, shortcut="B", family="cifar"), data) == base
    assert config_digest(train, ModelConfig(variant="v1.5"), data) != base
    assert config_digest(TrainConfig(lr=0.05), ModelConfig(), data) != base
    assert config_digest(TrainConfig(experiment="other", checkpoint_every=7), ModelConfig(), data) == base
    assert config_digest(TrainConfig(log_every=7), ModelConfig(), data) != base  # it moves the end of the warm-up


def test_evaluate_finds_the_sweep_that_ran_last_under_a_name(tmp_path: Path) -> None:
    """Re-running a sweep with an older sweep's settings reopens that older parent run: it is then the
    one `evaluate --sweep` takes, not the newer one with other settings."""
    import time

    from resnet_pipeline import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def open_sweep(digest: str) -> tuple[str, str | None]:
        time.sleep(0.01)  # distinct millisecond stamps
        return tracking.start_run(uri, "e", "s", {}, {"sweep": "s", "config_digest": digest}, match_tag="config_digest")

    first, _ = open_sweep("aaaaaa")
    tracking.end_run(uri, first, tracking.FINISHED)
    second, _ = open_sweep("bbbbbb")
    tracking.end_run(uri, second, tracking.FINISHED)
    assert tracking.find_parent_run(uri, "e", "s").info.run_id == second
    again, previous = open_sweep("aaaaaa")
    assert (again, previous) == (first, tracking.FINISHED)
    assert tracking.find_parent_run(uri, "e", "s").info.run_id == first


def test_cli_sweep_json_and_exit_status_when_a_trial_fails(tiny_data: Path, tmp_path: Path, ray_session,
                                                           monkeypatch) -> None:
    """`sweep --json` prints the summary alone on stdout; a failed trial makes the exit status non-zero
    (a DVC stage must not look complete) and is named; no run is left RUNNING."""
    import yaml
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train = {**TRAIN, "iterations": 10, "workers": 1, "inject_failure_at": 5, "max_failures": 0,
             "storage_path": str(tmp_path / "results")}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": train, "sweep": {"depths": [8], "shortcuts": ["A"], "name": "broken",
                                                               "out": str(tmp_path / "m")}}))
    result = CliRunner().invoke(main, ["sweep", "--params", str(params), "--data", str(tiny_data), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["incomplete"] == ["A-8 seed 0: FAILED"] and len(summary["errors"]) == 1
    assert "sweep not complete (A-8 seed 0: FAILED)" in result.stderr and "Traceback" not in result.output
    client = _client(uri)
    assert client.get_run(summary["parent_run_id"]).info.status == "FAILED"
    assert client.get_run(summary["trials"][0]["run_id"]).info.status == "FAILED"


def test_trial_threads_share_the_cores() -> None:
    from resnet_pipeline.sweep.resources import trial_threads

    assert trial_threads(16, 16, 1, 1, 2) == 7  # one Ray Train trial of 2 workers: 15 cores beside its driver
    assert trial_threads(16, 16, 5, 1, 2) == 1  # 5 such trials at once: 3 cores each, less the driver
    assert trial_threads(16, 16, 2, 0, 1) == 8  # 2 in-trial trials
    assert trial_threads(64, 16, 1, 0, 1) == 16  # 4 nodes of 16 cores: a trial takes at most one node's
    assert trial_threads(2, 2, 4, 0, 1) == 1


def test_in_trial_trials_ask_ray_for_the_cores_their_threads_use(tiny_data: Path, tmp_path: Path,
                                                                 ray_session) -> None:
    """Two one-worker trials of 2 threads each on the test's 3-CPU Ray instance: each asks for 2 CPUs,
    so they run one after the other (asking for 1, both ran at once: 4 threads on 2 cores)."""
    import ray

    assert ray.cluster_resources()["CPU"] < 4
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = SweepConfig(depths=[8], shortcuts=["A"], seeds=2, name="threads", out=str(tmp_path / "m"))
    train = TrainConfig(**{**TRAIN, "iterations": 10, "eval_every": 10, "workers": 1, "threads_per_worker": 2},
                        storage_path=str(tmp_path / "results"))
    summary = run_sweep(sweep, train, ModelConfig(), tiny_data, backend="dali-cpu", num_threads=1, tracking_uri=uri)
    assert summary["incomplete"] == []
    client = _client(uri)
    first, second = sorted((client.get_run(r["run_id"]) for r in summary["trials"]), key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time
    assert {r.data.params["train.threads_per_worker"] for r in (first, second)} == {"2"}


# --- GPUs: packing and caps, computed before any trial starts -----------------------------------

def _place(sweep: SweepConfig, train: TrainConfig, in_trial: bool, **cluster):
    from resnet_pipeline.sweep.resources import placement

    return placement(sweep, train, in_trial, **{"cpus": 64, "gpus": 8, "node_cpus": 64, "cpus_per_gpu": 8,
                                                "on_gpus": True, **cluster})


def test_small_nets_share_a_gpu_and_trials_are_capped_by_the_gpus() -> None:
    one = TrainConfig(workers=1)
    # CIFAR nets, one worker each: a quarter of a GPU and of its 8 cores per trial, 32 at once on 8 GPUs.
    cifar = _place(SweepConfig(depths=[20, 56]), one, True)
    assert (cifar.concurrent, cifar.resources, cifar.threads, cifar.gpu_share) == (32, {"CPU": 2, "GPU": 0.25}, 2, 0.25)
    # ImageNet nets: a whole GPU each; an explicit fraction is taken as given.
    assert _place(SweepConfig(depths=[18, 34]), one, True).resources == {"CPU": 8, "GPU": 1.0}
    assert _place(SweepConfig(depths=[20], gpus_per_trial=0.5), one, True).concurrent == 16
    # Trials of 4 workers (a GPU each): two at once on 8 GPUs, whatever max_concurrent says (more would
    # wait for GPUs that never come, time out and retry for ever); 9 workers cannot run at all.
    four = TrainConfig(workers=4)
    assert _place(SweepConfig(depths=[20]), four, False).concurrent == 2
    assert _place(SweepConfig(depths=[20], max_concurrent=6), four, False).concurrent == 2
    with pytest.raises(ConfigError, match=r"train.workers=9 with GPUs needs 9 GPUs per trial but the Ray cluster has 8"):
        _place(SweepConfig(depths=[20]), TrainConfig(workers=9, batch_size=117), False)
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        _place(SweepConfig(depths=[20]), one, True, gpus=0)
    # On the CPU nothing changes: in-trial trials reserve the cores their threads use.
    cpu = _place(SweepConfig(depths=[20], max_concurrent=2), TrainConfig(workers=1), True, cpus=2, gpus=0,
                 node_cpus=2, cpus_per_gpu=0, on_gpus=False)
    assert (cpu.concurrent, cpu.resources, cpu.threads, cpu.gpu_share) == (2, {"CPU": 1}, 1, 1.0)


@pytest.mark.parametrize("value", [0, 1.5, -0.25])
def test_gpus_per_trial_is_a_fraction_of_one_gpu(value: float) -> None:
    with pytest.raises(ConfigError, match=r"sweep.gpus_per_trial: must be in \(0, 1\]"):
        SweepConfig(gpus_per_trial=value).validate()


def test_any_params_key_from_the_command_line(tiny_data: Path) -> None:
    """-S section.key=value (DVC's spelling; the value read as YAML) overrides any key on the stage
    commands, checked like the file: a misspelt key or a bad value is the same one-line error."""
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    args = ["sweep", "--dry-run", "--json", "--data", str(tiny_data)]
    result = CliRunner().invoke(main, [*args, "-S", "sweep.depths=[8, 14]", "-S", "sweep.shortcuts=plain",
                                       "-S", "train.iterations=3000", "-S", "train.batch_size=32"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(t["depth"], t["shortcut"]) for t in report["trials"]] == [(8, "plain"), (14, "plain")]
    assert report["trials"][0]["train_mult_adds"] == report["trials"][0]["mult_adds"] * 3 * 3000 * 32
    for bad, message in ((["-S", "train.iterationz=5"], "unknown key(s) in params section 'train': iterationz"),
                         (["-S", "train.iterations=many"], "train.iterations: expected an integer, got 'many'"),
                         (["-S", "trian.iterations=5"], "unknown section 'trian'; valid sections are: data, model"),
                         (["-S", "iterations=5"], "expected section.key=value")):
        result = CliRunner().invoke(main, [*args, *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_apply_sets_reads_values_as_yaml() -> None:
    from resnet_pipeline.config import apply_sets

    params = {"train": {"iterations": 10}, "data": {"dataset": "demo"}}
    out = apply_sets(params, ["train.run_name=null", "data.resize_range=[128, 160]", "train.lr=0.01",
                              "model.shortcut=B", "train.compile=true"])
    assert out == {"train": {"iterations": 10, "run_name": None, "lr": 0.01, "compile": True},
                   "data": {"dataset": "demo", "resize_range": [128, 160]}, "model": {"shortcut": "B"}}
    assert params == {"train": {"iterations": 10}, "data": {"dataset": "demo"}}  # the file's dict is untouched


def test_the_design_cards_sweep_before_any_data_is_prepared(tmp_path: Path) -> None:
    """`sweep --depths 18,34,50,101,152 --dry-run` works before `prepare` (the data's shape comes from
    params.yaml: CIFAR-10, 32 px, 10 classes) and gives hours; the real run says how to prepare the data."""
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    missing = str(tmp_path / "not-prepared")
    result = CliRunner().invoke(main, ["sweep", "--depths", "18,34,50,101,152", "--dry-run", "--data", missing])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the title wraps
    assert "not prepared yet" in text and "10 classes, 32 px inputs" in text
    assert "estimated total:" in text and text.count(" h ") >= 10  # hours per trial and in all
    assert "…" not in result.output  # no cell cut short
    result = CliRunner().invoke(main, ["sweep", "--depths", "18,34", "--data", missing])
    assert result.exit_code == 2 and "`python cli.py prepare`" in result.output
    assert "--source /path/to/archive-or-folder" in result.output
