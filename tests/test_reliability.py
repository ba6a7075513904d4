"""Reliability: real faults injected into real Ray, MLflow, DVC and the filesystem; bad input at the CLI.

The figures these tests produce are in docs/reliability.md. A worker killed with SIGKILL is in
tests/test_training.py (`test_worker_failure_restarts_from_checkpoint_bit_exactly[sigkilled]`).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from resnet_pipeline.models import ModelConfig
from resnet_pipeline.training import CheckpointError, CheckpointManager, TrainConfig, load_checkpoint
from resnet_pipeline.training.loop import DataSource, fit

from conftest import make_image_folder, write_images

TINY = dict(batch_size=32, milestones=[1000], log_every=10, eval_every=1000, checkpoint_every=10, workers=1,
            precision="fp32", deterministic=True, threads_per_worker=1, keep_checkpoints=1)


# --- a checkpoint folder that becomes full or unwritable mid-run -------------------------------

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("fault", ["file-size-limit", "disk-full", "read-only"])
def test_checkpoint_write_failure_mid_run(tiny_data: Path, tmp_path: Path, fault: str, request) -> None:
    """At iteration 20 the checkpoint folder stops taking writes: the run stops with an error naming
    the folder and the cause, and the checkpoint of iteration 10 still loads."""
    run_dir = tmp_path / "run"
    if fault != "file-size-limit" and not _mount_tmpfs(run_dir, "8m"):
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN; the file-size-limit case covers the same path")
    if fault != "file-size-limit":
        request.addfinalizer(lambda: subprocess.run(["umount", str(run_dir)], check=True))
    undo = []

    def inject(metrics: dict, step: int) -> None:
        if step != 20 or undo:
            return
        if fault == "file-size-limit":  # as a quota would: writes past 64 KiB fail with EFBIG
            previous = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, previous[0][1]))
            undo.append(lambda: (resource.setrlimit(resource.RLIMIT_FSIZE, previous[0]),
                                 signal.signal(signal.SIGXFSZ, previous[1])))
        elif fault == "disk-full":
            filler = run_dir / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            undo.append(filler.unlink)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(run_dir)], check=True)
            undo.append(lambda: subprocess.run(["mount", "-o", "remount,rw", str(run_dir)], check=True))

    try:
        with pytest.raises(CheckpointError) as err:
            fit(TrainConfig(iterations=30, **TINY), ModelConfig(depth=8), DataSource(str(tiny_data), "dali-cpu"),
                run_dir, report=inject)
    finally:
        for fn in undo:
            fn()
    msg = str(err.value)
    ckpts = CheckpointManager(run_dir / "checkpoints")
    cause = {"file-size-limit": "File too large", "disk-full": "No space left", "read-only": "Read-only"}[fault]
    assert f"iteration 20 to {ckpts.directory}" in msg and cause in msg, msg
    assert str(ckpts.path(10)) in msg and "is intact" in msg, msg
    assert ckpts.iterations() == [10]
    assert not [p for p in ckpts.directory.iterdir() if p.name.startswith(".")], "temporary file left behind"
    state = load_checkpoint(ckpts.latest())
    assert state["iteration"] == 10 and all(torch.isfinite(v).all() for v in state["model"].values()
                                            if v.is_floating_point())


# --- several trials writing to one MLflow sqlite store at once ---------------------------------

WRITERS, STEPS = 4, 10

# What a trial's driver and rank-0 worker do to the store, as fast as they can, once `go` exists.
_WRITER = """
import sys, time
from pathlib import Path
from resnet_pipeline import tracking
uri, parent_id, name, steps, folder = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
start = time.perf_counter()
run_id, _ = tracking.start_run(uri, "concurrent", name, {"train": {"lr": 0.1, "depth": 8}}, {"depth": "8"},
                               parent_run_id=parent_id)
for step in range(1, steps + 1):
    tracking.log_metrics(uri, run_id, {"train_loss": 1 / step, "train_error": step / 100, "lr": 0.1}, step)
tracking.set_tags(uri, run_id, {"done": "true"})
tracking.end_run(uri, run_id, tracking.FINISHED)
print(f"{time.perf_counter() - start:.2f}")
"""


def test_concurrent_writers_to_one_sqlite_store(tmp_path: Path) -> None:
    """4 processes create their runs and log 10 steps x 3 metrics each into one sqlite file at the same
    moment: every value arrives, no 'database is locked' escapes (MLflow's busy timeout plus
    tracking._retry's backoff)."""
    from mlflow.tracking import MlflowClient

    from resnet_pipeline import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent_id, _ = tracking.start_run(uri, "concurrent", "sweep", {}, {"sweep": "concurrent"})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, uri, parent_id, f"trial{i}", str(STEPS), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(WRITERS)]
    end = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < WRITERS and all(p.poll() is None for p in procs):
        assert time.monotonic() < end, "writers did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and "locked" not in err, err[-3000:]
    client = MlflowClient(uri)
    children = tracking.child_runs(uri, parent_id)
    assert sorted(r.info.run_name for r in children) == [f"trial{i}" for i in range(WRITERS)]
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["done"] == "true"
        for key in ("train_loss", "train_error", "lr"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, tracking.mlflow_key(key))]
            assert sorted(steps) == list(range(1, STEPS + 1)), (run.info.run_name, key, steps)
    print(f"{WRITERS} writers x {STEPS} batches, seconds after the start signal: {[o.strip() for o, _ in outputs]}")


# --- bad input at the CLI: one clear line, before Ray or MLflow start --------------------------

_CLI_SCRIPT = """
import json, os, sys, time
from click.testing import CliRunner
from resnet_pipeline.cli import main
out = {}
for name, args in json.load(open(sys.argv[1])).items():
    start = time.perf_counter()
    r = CliRunner().invoke(main, args)
    ray = sys.modules.get("ray")
    out[name] = {"exit_code": r.exit_code, "output": r.output, "seconds": time.perf_counter() - start,
                 "exception": None if r.exception is None or isinstance(r.exception, SystemExit) else repr(r.exception),
                 "ray_started": bool(ray and ray.is_initialized()), "mlflow_db": os.path.exists("mlflow.db")}
json.dump(out, open(sys.argv[2], "w"))
"""


def _bad_sources(root: Path) -> dict[str, Path]:
    """One source folder or archive per kind of bad data input."""
    src = {}
    src["empty_class"] = make_image_folder(root / "empty_class", {"a": 4, "b": 4})
    (src["empty_class"] / "train" / "c").mkdir()
    src["no_images"] = root / "no_images"
    for cls in ("a", "b"):
        (src["no_images"] / "train" / cls).mkdir(parents=True)
        (src["no_images"] / "train" / cls / "notes.jpg").write_text("text, not a JPEG\n")
    tree = make_image_folder(root / "tree" / "cifar10-jpeg", {"a": 6, "b": 6})
    src["truncated"] = root / "data.tar.gz"
    with tarfile.open(src["truncated"], "w:gz") as tf:
        tf.add(tree, arcname="cifar10-jpeg")
    src["truncated"].write_bytes(src["truncated"].read_bytes()[:2000])
    batches = root / "fake_cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (batches / name).write_bytes(b"not the official bytes")
    src["checksum"] = batches.parent
    write_images(root / "layout" / "images" / "a", 3)
    src["layout"] = root / "layout"
    return src


def _params(root: Path, name: str, sections: dict) -> str:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


# name: (CLI arguments, what the one error line must contain); {data}, {src:<kind>}, {root} are filled in.
BAD_INPUT = {
    "empty class folder": (["prepare", "--dataset", "imagefolder", "--source", "{src:empty_class}"],
                           ["empty_class/train/c", "is empty"]),
    "no images at all": (["prepare", "--dataset", "imagefolder", "--source", "{src:no_images}"],
                         ["no valid image", "no_images"]),
    "truncated archive": (["prepare", "--dataset", "imagefolder", "--source", "{src:truncated}"],
                          ["data.tar.gz", "truncated"]),
    "checksum mismatch": (["prepare", "--dataset", "cifar10", "--source", "{src:checksum}"],
                          ["checksum mismatch", "fake_cifar/cifar-10-batches-py"]),
    "wrong archive layout": (["prepare", "--dataset", "imagefolder", "--source", "{src:layout}"],
                             ["wrong layout", "train/<class>"]),
    "missing data path (prepare)": (["prepare", "--dataset", "imagefolder", "--source", "{root}/nowhere"],
                                    ["{root}/nowhere", "does not exist"]),
    "missing data path (train)": (["train", "--data", "{root}/nowhere"], ["{root}/nowhere"]),
    "unknown dataset (flag)": (["prepare", "--dataset", "imagenet21k"], ["'imagenet21k' is not one of", "cifar10"]),
    "unknown dataset (params)": (["prepare", "--params", "{params:dataset}"], ["data.dataset", "'cifar10'"]),
    "depth 21 for CIFAR": (["train", "--data", "{data}", "--depth", "21"], ["21", "6n+2"]),
    "depth 19 for ImageNet": (["train", "--params", "{params:imagenet19}", "--data", "{data}"],
                              ["19", "18, 34, 50, 101, 152"]),
    "unknown shortcut (flag)": (["train", "--data", "{data}", "--shortcut", "D"], ["'D' is not one of", "'plain'"]),
    "unknown shortcut (params)": (["train", "--params", "{params:shortcut}", "--data", "{data}"],
                                  ["shortcut", "'E'", "plain"]),
    "unknown shortcut (sweep)": (["sweep", "--data", "{data}", "--shortcuts", "A,D"], ["sweep.shortcuts", "'D'"]),
    "zero learning rate": (["train", "--data", "{data}", "--lr", "0"], ["train.lr", "positive", "got 0.0"]),
    "negative learning rate": (["train", "--data", "{data}", "--lr", "-0.1"], ["train.lr", "positive", "got -0.1"]),
    "batch not divisible by workers": (["train", "--data", "{data}", "--batch-size", "33", "--workers", "2"],
                                       ["batch_size 33 is not divisible by train.workers 2"]),
    "more workers than cores": (["train", "--data", "{data}", "--workers", "64", "--batch-size", "64"],
                                ["train.workers=64", "RAY_ADDRESS"]),
    "typo'd params key": (["train", "--params", "{params:typo}", "--data", "{data}"],
                          ["lerning_rate", "valid keys are", "lr"]),
}


@pytest.fixture(scope="module")
def bad_input_results(tiny_data: Path, tmp_path_factory) -> dict:
    """Every BAD_INPUT case through the real CLI, in one fresh process (no Ray, no MLflow yet)."""
    root = tmp_path_factory.mktemp("bad_input")
    src = _bad_sources(root / "sources")
    params = {
        "dataset": _params(root, "dataset", {"data": {"dataset": "imagenet21k"}}),
        "imagenet19": _params(root, "imagenet19", {"model": {"depth": 19, "family": "imagenet"}}),
        "shortcut": _params(root, "shortcut", {"model": {"shortcut": "E"}}),
        "typo": _params(root, "typo", {"train": {"lerning_rate": 0.1}}),
    }

    def fill(text: str) -> str:
        text = text.replace("{data}", str(tiny_data)).replace("{root}", str(root))
        for kind, path in src.items():
            text = text.replace(f"{{src:{kind}}}", str(path))
        for kind, path in params.items():
            text = text.replace(f"{{params:{kind}}}", path)
        return text

    cases = {name: [fill(a) for a in args] for name, (args, _) in BAD_INPUT.items()}
    for args in cases.values():
        if args[0] == "prepare":
            args += ["--out", str(root / "out")]
    (root / "cases.json").write_text(json.dumps(cases))
    cwd = root / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, str(root / "cases.json"), str(root / "out.json")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "out.json").read_text())
    return {name: {**r, "expect": [fill(e) for e in BAD_INPUT[name][1]], "out_dir": root / "out", "cwd": cwd}
            for name, r in results.items()}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_clear_line_before_anything_starts(bad_input_results: dict, case: str) -> None:
    r = bad_input_results[case]
    errors = [line for line in r["output"].splitlines() if line.startswith("Error:")]
    assert r["exit_code"] == 2 and r["exception"] is None, r
    assert len(errors) == 1 and "Traceback" not in r["output"], r["output"]
    for part in r["expect"]:
        assert part in errors[0], (part, errors[0])
    assert not r["ray_started"] and not r["mlflow_db"], r
    assert not (r["cwd"] / "results").exists() and not r["out_dir"].exists()


def test_rejected_files_are_named_by_the_cli(tmp_path: Path) -> None:
    """A corrupt JPEG, a zero-byte file and a text file named .jpg do not stop `prepare`: each is left
    out, named with its reason in rejected.txt, and counted in the command's output."""
    from click.testing import CliRunner

    from resnet_pipeline.cli import main

    src = make_image_folder(tmp_path / "src", {"a": 4, "b": 4})
    good = (src / "train" / "a" / "train0_000.jpg").read_bytes()
    (src / "train" / "a" / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (src / "train" / "a" / "zero.jpg").write_bytes(b"")
    (src / "train" / "b" / "text.jpg").write_text("not an image\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prepare", "--dataset", "imagefolder", "--source", str(src), "--out", str(out)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "rejected 3 file(s)" in result.output and str(out / "rejected.txt") in result.output, result.output
    rejected = (out / "rejected.txt").read_text()
    for name, kind in (("train/a/corrupt.jpg", "corrupt:"), ("train/a/zero.jpg", "empty:"),
                       ("train/b/text.jpg", "not-image:")):
        assert any(line.startswith(name) and kind in line for line in rejected.splitlines()), (name, rejected)


def test_more_workers_than_the_cluster_has_fails_at_once(tiny_data: Path, tmp_path: Path, ray_session) -> None:
    """With Ray already running (as with $RAY_ADDRESS), a worker group the cluster cannot place is an
    error naming both numbers, not a wait for resources that never come; the run ends FAILED."""
    import ray
    from mlflow.tracking import MlflowClient

    from resnet_pipeline.config import ConfigError
    from resnet_pipeline.training.driver import train

    cpus = ray.cluster_resources()["CPU"]
    workers = int(cpus) + 1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(**{**TINY, "workers": workers, "batch_size": 8 * workers}, storage_path=str(tmp_path / "r"),
                      run_name="too-many", experiment="capacity")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"train.workers={workers} needs {workers} CPUs but the Ray cluster has "
                                          f"{cpus:g}"):
        train(cfg, ModelConfig(depth=8), tiny_data, backend="dali-cpu", tracking_uri=uri)
    assert time.perf_counter() - start < 120
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("capacity").experiment_id])
    assert run.info.status == "FAILED"


# --- security defaults -------------------------------------------------------------------------

def test_ray_dashboard_is_local_and_token_auth_is_on(ray_session) -> None:
    import socket

    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    host, port = ray._private.worker.global_worker.node.address_info["webui_url"].rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # it listens on loopback ...
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":  # ... and not on the machine's own address
        with pytest.raises(OSError):
            socket.create_connection((node_ip, int(port)), timeout=5).close()


def test_mlflow_server_binds_to_localhost_by_default() -> None:
    import mlflow.cli

    (host,) = [p.default for p in mlflow.cli.server.params if p.name == "host"]
    assert host == "127.0.0.1"


class _Booby(torch.nn.Module):
    """Unpickling it runs code: it writes the file named by its `marker`."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.fc = torch.nn.Linear(2, 2)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("code ran while loading")
        super().__setstate__(state)


def test_predict_loads_only_pt2_models_from_the_projects_store(tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch

    from resnet_pipeline.config import ConfigError
    from resnet_pipeline.evaluation.predict import predict

    jpeg, = write_images(tmp_path / "img", 1)
    marker = tmp_path / "pwned"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(_Booby(str(marker)), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"])
    local = tmp_path / "local"
    mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(local), tracking_uri=uri)
    with pytest.raises(ConfigError, match="models:/ or runs:/ URI of this project's MLflow store"):
        predict([jpeg], str(local), tracking_uri=uri)
    with pytest.raises(ConfigError, match="not in the pt2"):
        predict([jpeg], f"runs:/{run.info.run_id}/model", tracking_uri=uri)
    assert not marker.exists()


# --- `dvc repro` of a sweep interrupted by Ctrl-C, then its driver SIGKILLed, then re-run ------

EXPERIMENT = "resnet-demo-faults"  # the runs of this test only, apart from test_dvc.py's


def _descendants(proc: psutil.Process) -> set:
    try:
        return set(proc.children(recursive=True))
    except psutil.Error:
        return set()


def _terminal_sigint() -> None:
    """In the child, before exec: SIGINT as a terminal's shell gives it (default action, not blocked).
    An ignored or blocked SIGINT is inherited across exec, and this test process may hold one from the
    tests before it (the full suite, in a fresh clone, once left the Ctrl-C below without effect)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Repro:
    """`dvc repro` of the demo pipeline, in its own session (as a terminal would run
    it), with every process it starts remembered so that exactly those can be checked and ended."""

    def __init__(self, repo: Path, log: Path) -> None:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
            env.pop(key, None)
        self.log = log
        self.proc = psutil.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "pipelines/demo/dvc.yaml"],
                                 cwd=repo, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_terminal_sigint)
        self.seen: set = set()
        self.started = time.perf_counter()

    def poll(self, done, timeout: float = 900) -> None:
        """Wait until ``done()``, remembering the processes the command has started meanwhile."""
        end = time.monotonic() + timeout
        while not done():
            self.seen |= _descendants(self.proc)
            assert self.proc.poll() is None, f"dvc repro ended early:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < end, f"timed out:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)
        self.seen |= _descendants(self.proc)

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout)

    def leftovers(self, grace: float = 20) -> list:
        """The processes this command started that are still alive ``grace`` s after it ended; they
        are then ended (they are ours) and must be gone."""
        end = time.monotonic() + grace
        alive = [p for p in self.seen if _alive(p)]
        while alive and time.monotonic() < end:
            time.sleep(0.5)
            alive = [p for p in alive if _alive(p)]
        names = sorted({_name(p) for p in alive})
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        gone, still = psutil.wait_procs(alive, timeout=10)
        assert not still, still
        return names


def _alive(p) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(p) -> str:
    try:
        return p.name()
    except Exception:
        return "?"


def _runs(uri: str) -> dict:
    """name -> run of every run in the demo experiment (empty while the store does not exist yet)."""
    from mlflow.tracking import MlflowClient

    from resnet_pipeline import tracking

    if not Path(uri[len("sqlite:///"):]).exists():
        return {}
    client = MlflowClient(uri)
    try:
        exp = tracking._retry(lambda: client.get_experiment_by_name(EXPERIMENT))
        return {r.info.run_name: r for r in tracking._retry(lambda: client.search_runs([exp.experiment_id]))} \
            if exp else {}
    except Exception as exc:  # the store is still being created
        if "no such table" in str(exc).lower():
            return {}
        raise


def _ckpt(repo: Path, trial: str) -> int:
    """The trial's latest checkpointed iteration in this sweep's folder (results/demo/demo-<digest>/,
    the one the first repro's sweep, with its other digest, did not write)."""
    its = CheckpointManager(_sweep_dir(repo) / trial / "checkpoints").iterations()
    return its[-1] if its else 0


_FIRST_SWEEP_DIRS: set[Path] = set()


def _sweep_folders(repo: Path) -> set[Path]:
    """results/demo/demo-<digest>/, the sweeps' folders (not Tune's demo-tune-<time>/ beside them, which
    a looser glob picked up in listing order: the test then watched a folder without trials)."""
    return {d for d in (repo / "results" / "demo").glob("demo-*") if re.fullmatch(r"demo-[0-9a-f]+", d.name)}


def _sweep_dir(repo: Path) -> Path:
    new = sorted(_sweep_folders(repo) - _FIRST_SWEEP_DIRS)
    assert len(new) <= 1, f"more than one new sweep folder: {new}"
    return new[0] if new else repo / "results" / "demo" / "not-yet"


@pytest.mark.slow
def test_interrupted_dvc_sweep_resumes_without_rerunning_finished_trials(demo_repo: Path, first_repro: str,
                                                                         tmp_path: Path) -> None:
    """On the demo pipeline that test_dvc.py ran: a changed training parameter (lr, and a fresh MLflow
    experiment to read the runs from) re-runs sweep, evaluate and report, not prepare. Ctrl-C once the
    first trial has finished and the second has a checkpoint; re-run; SIGKILL of the sweep's driver
    once the second trial has checkpointed again; re-run: the pipeline completes, the finished trial
    never runs again, no MLflow run is left RUNNING, and the interrupted trial's final weights equal
    those of the same training run without Ray and without interruption."""
    repo, uri = demo_repo, f"sqlite:///{demo_repo / 'mlflow.db'}"
    figures: dict = {}
    params_path = repo / "pipelines/demo/params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # Long enough that the interrupt lands while the second trial trains: 40 iterations took ~3 s,
    # and a Ctrl-C polled at its last checkpoint could reach the driver only as it exited (ignored).
    # 100 iterations (~4 s a trial) were too few once the trials' system metrics went to the same
    # sqlite store every 2 s: this test's polls, which read that store, wait out its write locks, and
    # twice in a full run missed the second trial between its first and last checkpoints.
    iterations = 300
    params["train"].update(lr=0.05, experiment=EXPERIMENT, iterations=iterations)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    old_checkpoints = set((repo / "results" / "demo").glob("*/*/checkpoints/ckpt_*.pt"))
    _FIRST_SWEEP_DIRS.update(_sweep_folders(repo))

    def trials() -> dict:
        return {n: r for n, r in _runs(uri).items() if "mlflow.parentRunId" in r.data.tags}

    # 1. Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it.
    first = _Repro(repo, tmp_path / "repro1.log")
    state: dict = {}

    def first_done_and_second_checkpointed() -> bool:
        if not set((repo / "results" / "demo").glob("*/*/checkpoints/ckpt_*.pt")) - old_checkpoints:
            return False  # not yet: the driver creates the store before any trial starts
        runs = trials()
        done = [n for n, r in runs.items() if r.info.status == "FINISHED"]
        other = [n for n in runs if n not in done]
        if done and other and 10 <= _ckpt(repo, other[0]) < iterations:
            state.update(finished=done[0], interrupted=other[0])
            return True
        return False

    figures["test_process_sigint"] = (str(signal.getsignal(signal.SIGINT)),
                                      sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    first.poll(first_done_and_second_checkpointed)
    finished, interrupted = state["finished"], state["interrupted"]
    figures["ctrl_c_at"] = _ckpt(repo, interrupted)
    os.killpg(first.proc.pid, signal.SIGINT)
    t = time.perf_counter()
    assert first.wait(120) != 0
    figures["ctrl_c_exit_s"] = time.perf_counter() - t
    figures["ctrl_c_leftovers"] = first.leftovers()
    runs = _runs(uri)
    assert {n: r.info.status for n, r in runs.items()} == {
        "demo": "KILLED", finished: "FINISHED", interrupted: "KILLED"}, first.log.read_text()[-3000:]
    finished_run = runs[finished]
    finished_files = {p.name: p.stat().st_mtime_ns for p in (_sweep_dir(repo) / finished).rglob("*.pt")}

    # 2. SIGKILL of the driver (`python cli.py sweep`) once the resumed trial has checkpointed again.
    second = _Repro(repo, tmp_path / "repro2.log")
    # (Had Ctrl-C come after the last checkpoint, kill as soon as the trial runs again.)
    second.poll(lambda: _ckpt(repo, interrupted) > figures["ctrl_c_at"] or (
        figures["ctrl_c_at"] >= iterations and trials()[interrupted].info.status == "RUNNING"))
    figures["sigkill_at"] = _ckpt(repo, interrupted)
    (driver,) = [p for p in _descendants(second.proc) if "cli.py" in " ".join(p.cmdline())
                 and "sweep" in p.cmdline()]
    driver.send_signal(signal.SIGKILL)
    assert second.wait(120) != 0
    figures["sigkill_leftovers"] = second.leftovers()
    figures["after_sigkill"] = {n: r.info.status for n, r in _runs(uri).items()}

    # 3. The same command again completes.
    third = _Repro(repo, tmp_path / "repro3.log")
    assert third.wait() == 0, third.log.read_text()[-3000:]
    figures["rerun_s"] = time.perf_counter() - third.started
    assert not third.leftovers()
    out = third.log.read_text()
    assert "2 trials, 1 already done, 1 to run" in out, out[-3000:]
    for stage in ("sweep", "evaluate", "report"):
        assert f"Running stage 'pipelines/demo/dvc.yaml:{stage}'" in out, out[-3000:]
    assert not any("Running stage 'pipelines/demo/dvc.yaml:prepare'" in r.log.read_text()
                   for r in (first, second, third))

    runs = _runs(uri)
    assert {n: r.info.status for n, r in runs.items()} == {"demo": "FINISHED", finished: "FINISHED",
                                                           interrupted: "FINISHED"}
    # The finished trial never ran again: the same run, untouched, its checkpoints not rewritten.
    assert runs[finished].info.run_id == finished_run.info.run_id
    assert runs[finished].info.end_time == finished_run.info.end_time
    assert {p.name: p.stat().st_mtime_ns for p in (_sweep_dir(repo) / finished).rglob("*.pt")} == finished_files
    from resnet_pipeline import tracking

    steps = [s for s, _ in tracking.metric_history(uri, runs[finished].info.run_id, "train_loss")]
    assert steps == list(range(10, iterations + 1, 10))
    steps = [s for s, _ in tracking.metric_history(uri, runs[interrupted].info.run_id, "train_loss")]
    assert steps == list(range(10, iterations + 1, 10))  # one value per step, replays deduplicated
    figures["interrupted_trial_points"] = len(steps)

    # The stage's outputs: every trial FINISHED with finite metrics, and DVC sees the stage as done.
    summary = json.loads((repo / "metrics/demo/sweep/summary.json").read_text())
    assert [r["status"] for r in summary["trials"]] == ["FINISHED", "FINISHED"]
    assert all(0 <= r[k] <= 1 for r in summary["trials"] for k in ("train_error", "val_error", "test_error"))
    assert set(json.loads((repo / "metrics/demo/sweep/metrics.json").read_text())) == {"plain-8", "A-8"}
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "pipelines/demo/dvc.yaml:sweep"],
                            cwd=repo, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout + status.stderr

    # The interrupted trial's weights equal the same training run done in one go, without Ray.
    from resnet_pipeline.config import load_params, load_section
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.training.driver import train

    params = load_params(repo / "pipelines/demo/params.yaml")
    data_cfg = load_data_config(params)
    row = next(r for r in summary["trials"] if r["run_id"] == runs[interrupted].info.run_id)
    train_cfg = load_section(TrainConfig, "train", params, seed=row["seed"], run_name="reference",
                             storage_path=str(tmp_path / "reference"))
    model_cfg = load_section(ModelConfig, "model", params, depth=row["depth"], shortcut=row["shortcut"])
    reference = train(train_cfg, model_cfg, repo / data_cfg.out, backend=data_cfg.backend,
                      normalize=data_cfg.normalize, num_threads=data_cfg.num_threads, aug=data_cfg.aug,
                      launcher="local", tracking_uri=f"sqlite:///{tmp_path / 'reference.db'}")
    ours = CheckpointManager(_sweep_dir(repo) / interrupted / "checkpoints").load_latest()["model"]
    theirs = CheckpointManager(Path(reference["run_dir"]) / "checkpoints").load_latest()["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert row["test_error"] == reference["metrics"]["test_error"]
    print("figures:", json.dumps(figures, default=str))
