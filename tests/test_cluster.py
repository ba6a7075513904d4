"""Cluster mode: a real Ray head (`ray start --head --block`) and `mlflow server`, started by
`python cli.py cluster up` on free ports; a tiny sweep submitted with `ray job submit` (through
`python cli.py submit`); a second node that cannot see a storage folder is refused; everything
stopped by PID, with nothing left running.

This test's head is reached only through the subprocesses' environments and the state folder: the
session's own Ray instance (conftest's ray_session) and os.environ are left alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from resnet_pipeline import cluster
from resnet_pipeline.config import load_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
# One trial of one worker, a few iterations: the cluster's start-up costs more than the training.
TRAIN = dict(iterations=10, batch_size=32, milestones=[1000], log_every=5, eval_every=10, checkpoint_every=10,
             workers=1, precision="fp32", threads_per_worker=1, experiment="test-cluster", storage_path="results")
SWEEP = dict(depths=[8], shortcuts=["A"], name="on-cluster", out="metrics/sweep")


def _cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _leftovers(needles: list[str]) -> list[str]:
    """Processes whose command line names this test's state or Ray temp folder."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(n in cmd for n in needles):
            found.append(f"{p.info['pid']}: {cmd[:150]}")
    return found


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[dict]:
    """`python cli.py cluster up` on free ports with a token of its own; at the end `cluster down`, and
    no process it started (nor their children) left running."""
    root = tmp_path_factory.mktemp("cluster")
    state = root / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                                                             "MLFLOW_TRACKING_URI")}
    env["RAY_AUTH_TOKEN_PATH"] = str(root / "auth_token")
    ports = [cluster.free_port() for _ in range(3)]
    recorded: list[psutil.Process] = []
    temp_dir = None
    try:
        up = _cli("cluster", "--state-dir", str(state), "up", "--port", str(ports[0]), "--dashboard-port",
                  str(ports[1]), "--mlflow-port", str(ports[2]), "--num-cpus", "4", env=env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        info = cluster.read_state(state)
        temp_dir = info["temp_dir"]
        recorded = cluster.processes(state)
        yield {"root": root, "state": state, "env": env, "info": info, "gcs_port": ports[0], "mlflow_port": ports[2]}
    finally:
        recorded += [p for p in cluster.processes(state) if p not in recorded]  # children started since
        down = _cli("cluster", "--state-dir", str(state), "down", env=env, timeout=120)
        for p in recorded:  # only if `down` failed: the processes this fixture started, by PID
            try:
                p.kill()
            except psutil.Error:
                pass
    assert down.returncode == 0, down.stdout + down.stderr
    assert recorded and not [p.pid for p in recorded if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not _leftovers([str(state), temp_dir])
    assert cluster.read_state(state) is None
    # The last job's log outlives the head: `down` saved it, and `cluster logs` prints that copy.
    job_id = (state / "last_job").read_text().strip()
    saved = (state / cluster.JOB_LOGS / f"{job_id}.log").read_text()
    logs = _cli("cluster", "--state-dir", str(state), "logs", env=env, timeout=60)
    assert logs.returncode == 0 and saved and logs.stdout == saved, logs.stdout[-2000:] + logs.stderr


def _wait_job(head: dict, job_id: str, timeout_s: float = 480) -> tuple[str, str]:
    """(final status, logs) of a job."""
    client_env = cluster.client_env(head["state"])
    deadline, status = time.monotonic() + timeout_s, "PENDING"
    while time.monotonic() < deadline and status in ("PENDING", "RUNNING"):
        time.sleep(3)
        status = cluster.job_info(job_id, client_env)["status"]
    logs = subprocess.run([cluster._bin("ray"), "job", "logs", "--address", client_env["RAY_API_SERVER_ADDRESS"],
                           job_id], env={**head["env"], **client_env}, capture_output=True, text=True,
                          timeout=60).stdout
    return status, logs


def test_sweep_job_on_a_one_machine_cluster(head: dict, tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    state, info, project = head["state"], head["info"], head["root"] / "project"
    project.mkdir()
    params = load_params(ROOT / "pipelines/demo/params.yaml")  # with the root's keys it extends
    params["data"].update(out=str(tiny_data), backend="dali-cpu", num_threads=1)
    params["train"].update(TRAIN)
    params["sweep"].update(SWEEP)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert (head["root"] / "auth_token").stat().st_mode & 0o077 == 0  # the token is private
    assert info["tracking_uri"] == f"http://127.0.0.1:{head['mlflow_port']}"

    # Token auth is on: the job API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{info['dashboard']}/api/jobs/", timeout=30)

    sub = _cli("submit", "--state-dir", str(state), "--project-dir", str(project), "--no-wait", "--",
               "python", "cli.py", "sweep", "--params", "params.yaml", env=head["env"], timeout=180)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = (state / "last_job").read_text().strip()
    status, logs = _wait_job(head, job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    # A client elsewhere has the token itself in RAY_AUTH_TOKEN, and no token file (README, several nodes).
    with monkeypatch.context() as m:
        m.setenv("RAY_AUTH_TOKEN", (head["root"] / "auth_token").read_text().strip())
        m.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-such-token"))
        remote = cluster.client_env(tmp_path / "no-state", address=info["dashboard"])
        assert "RAY_AUTH_TOKEN_PATH" not in remote and cluster.job_info(job_id, remote)["status"] == "SUCCEEDED"

    # The tracking server holds the sweep: a parent run and a finished child run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    exp = client.get_experiment_by_name("test-cluster")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in parents] == ["on-cluster"] and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert children[0].data.tags["shortcut"] == "A" and "test/error" in children[0].data.metrics
    # Artifacts went through the server into its artifact destination.
    assert list((state / "mlartifacts").rglob("MLmodel"))

    # Relative paths resolved in the project folder; the upload left out data, venv, git and stores.
    assert [d for d in (project / "results").iterdir() if d.name.startswith("on-cluster-")]
    assert (project / "metrics/sweep/summary.json").is_file()
    pkgs = [p for p in Path(info["temp_dir"]).glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
            if p.is_dir()]
    assert pkgs and (pkgs[0] / "cli.py").is_file() and (pkgs[0] / "resnet_pipeline").is_dir()
    shipped = {p.name for p in pkgs[0].iterdir()}
    assert not shipped & {".git", ".venv", "data", "mlruns", ".cluster", "results"}, shipped
    assert sum(f.stat().st_size for f in pkgs[0].rglob("*") if f.is_file()) < 5 * 2**20


def test_bad_cluster_input_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    bad_port = _cli("cluster", "--state-dir", str(tmp_path), "up", "--mlflow-port", "70000", env=env, timeout=60)
    assert bad_port.returncode == 2 and "--mlflow-port: must be a port number in 1..65535" in bad_port.stderr
    no_address = _cli("submit", "--state-dir", str(tmp_path), "--", "python", "cli.py", "models", env=env, timeout=60)
    assert no_address.returncode == 2 and "no cluster address" in no_address.stderr
    grpc = _cli("submit", "--state-dir", str(tmp_path), "--address", "127.0.0.1:6379", "--", "true", env=env,
                timeout=60)
    assert grpc.returncode == 2 and "http://HEAD:8265" in grpc.stderr
    relative = _cli("submit", "--state-dir", str(tmp_path), "--address", "http://127.0.0.1:1", "--project-dir",
                    "shared", "--", "true", env=env, timeout=60)
    assert relative.returncode == 2 and "--project-dir 'shared': must be an absolute path" in relative.stderr
    store = _cli("cluster", "--state-dir", str(tmp_path), "up", "--backend-store-uri", "bogus://x", env=env, timeout=60)
    assert store.returncode == 2 and "--backend-store-uri 'bogus://x': expected a database URL" in store.stderr
    if not any(importlib.util.find_spec(m) for m in ("psycopg2", "psycopg")):
        pg = _cli("cluster", "--state-dir", str(tmp_path), "up", "--backend-store-uri", "postgresql://u:p@db/mlflow",
                  env=env, timeout=60)
        assert pg.returncode == 2 and "needs a postgresql driver" in pg.stderr and "psycopg2-binary" in pg.stderr
    assert not (tmp_path / "cluster.json").exists()  # nothing was started


def test_upload_excludes_keep_the_package_small() -> None:
    excludes = cluster.upload_excludes()
    assert {"/.venv", "/data", "/.git", "/mlruns", "/results", "/.dvc/cache", "*.db"} <= set(excludes)
    # Top-level folders are anchored: the package's own data/ and models/ modules still ship.
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", excludes)
    assert spec.match_file("data/prepared/x.png") and spec.match_file(".venv/bin/python")
    assert not spec.match_file("resnet_pipeline/data/loader.py") and not spec.match_file("resnet_pipeline/models")


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# One job (two would share one unpacked working dir, which the other node's agent may delete).
CHECK = """
import sys, time
from pathlib import Path
import ray
from resnet_pipeline.config import ConfigError
from resnet_pipeline.training.ray_launch import check_storage
ray.init()
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    time.sleep(1)
check_storage(Path(sys.argv[1]))
print("shared ok")
try:
    check_storage(Path(sys.argv[2]))
except ConfigError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root) to hide a folder from the second node")
def test_storage_must_be_shared_on_several_nodes(head: dict, tmp_path: Path) -> None:
    """A second node joins in its own mount namespace, where `local` is an empty tmpfs: a storage
    path there is refused naming the node; `shared` (seen by both) passes."""
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir()
    local.mkdir()
    # A temp dir of its own, as on a real node: two nodes sharing one would delete each other's
    # unpacked working dirs.
    node_temp = tempfile.mkdtemp(prefix="ray-w-")
    join = (f"mount -t tmpfs tmpfs {local} && exec {cluster._bin('ray')} start --address "
            f"{cluster._primary_ip()}:{head['gcs_port']} --block --num-cpus 1 --disable-usage-stats "
            f"--dashboard-agent-listen-port {cluster.free_port()} --temp-dir {node_temp}")
    env = {**head["env"], **cluster.auth_env(head["root"] / "auth_token"),  # the head's token, the venv active
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{head['env']['PATH']}"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", join], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        sub = _cli("submit", "--state-dir", str(head["state"]), "--no-wait", "--", "python", "-c", CHECK,
                   str(shared), str(local), env=head["env"], timeout=180)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        status, logs = _wait_job(head, (head["state"] / "last_job").read_text().strip(), timeout_s=400)
        assert status == "SUCCEEDED" and "shared ok" in logs, logs[-3000:]
        assert (f"refused: train.storage_path is required on a cluster of 2 nodes: {local} is not visible from "
                "node(s)") in logs, logs[-3000:]
    finally:
        if worker.poll() is None:
            tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
            worker.terminate()  # `ray start --block` stops its node's processes on SIGTERM
            _, alive = psutil.wait_procs(tree, timeout=30)
            for p in alive:  # only this test's worker node, by PID
                try:
                    p.kill()
                except psutil.Error:
                    pass
        worker.wait(timeout=30)
        shutil.rmtree(node_temp, ignore_errors=True)
    assert not [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not _leftovers([str(local), node_temp])
