"""Cluster mode: a Ray head and an MLflow tracking server on this machine, and jobs submitted to a cluster.

`up` runs `ray start --head --block` and `mlflow server` in the background and records their PIDs (with start times)
in a state folder, `.cluster/` by default; `down` stops exactly those processes and their children. Jobs go through
`ray job submit`, so these helpers do what the README shows by hand. Ray's token authentication stays on: the head
starts with RAY_AUTH_MODE=token, and every client command gets the token file through RAY_AUTH_TOKEN_PATH.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from resnet_pipeline.config import PROJECT_ROOT, ConfigError
from resnet_pipeline.files import write_json_atomic

STATE_FILE = "cluster.json"
JOB_LOGS = "job-logs"  # driver logs of the jobs, copied here by `down`
# Relative paths of a submitted command resolve against this folder (cli.main changes into it):
# the job itself runs in Ray's unpacked copy of the code, which holds no data.
PROJECT_DIR_ENV = "RESNET_PROJECT_DIR"
RAYIGNORE = PROJECT_ROOT / ".rayignore"
DASHBOARD_PORT, GCS_PORT, MLFLOW_PORT = 8265, 6379, 5000


class ClusterError(ConfigError):
    """A cluster command cannot proceed; the message says why and what to do."""


def default_state_dir() -> Path:
    return Path(".cluster").resolve()


def upload_excludes() -> list[str]:
    """The patterns of .rayignore: what a job's working directory leaves out."""
    lines = RAYIGNORE.read_text().splitlines() if RAYIGNORE.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def token_path() -> Path:
    """Where Ray reads the token: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's default)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_token(path: Path) -> Path:
    """Create the token file if missing, as `ray get-auth-token --generate` does (256 random bits)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_hex(32))
    return path


def auth_env(path: Path) -> dict[str, str]:
    """Client environment for a token-authenticated cluster (ray CLI, job SDK, `ray start --address`)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _primary_ip() -> str:
    """This machine's address on its default route; 127.0.0.1 without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: sends nothing, only picks the route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _bin(name: str) -> str:
    """A console script of this environment (the venv's `ray`, `mlflow`), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ClusterError(f"`{name}` not found beside {sys.executable} or on PATH; install the project first")
    return found


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start ``cmd`` in its own session (a terminal's Ctrl-C does not reach it), output to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "cmd": cmd, "log": str(log)}


def read_state(state_dir: Path) -> dict[str, Any] | None:
    f = state_dir / STATE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _process(entry: dict[str, Any]):
    """The recorded process if it still runs (same PID and start time: never a reused PID), else None."""
    try:
        p = psutil.Process(entry["pid"])
        return p if abs(p.create_time() - entry["create_time"]) < 0.01 and p.is_running() else None
    except psutil.Error:
        return None


def _wait_http(url: str, entry: dict[str, Any], headers: dict[str, str], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _process(entry) is None:
            raise ClusterError(f"{what} exited while starting; see {_log_tail(entry)}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(1)
    raise ClusterError(f"{what} did not answer {url} within {timeout_s:.0f} s; see {_log_tail(entry)}")


def _log_tail(entry: dict[str, Any], lines: int = 20) -> str:
    """The process's log file and its last ``lines`` lines."""
    log = Path(entry["log"])
    return f"{log}:\n" + ("\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "")


def _check_can_start(state_dir: Path, num_cpus: int | None, host: str, mlflow_host: str, port: int,
                     dashboard_port: int, mlflow_port: int, backend_store_uri: str | None) -> None:
    """ClusterError, before anything starts, for a cluster of this state folder still running, a bad
    CPU count or port, an MLflow store the server cannot open, or a port already taken."""
    old = read_state(state_dir)
    if old and any(_process(e) for e in old["processes"].values()):
        raise ClusterError(f"a cluster started from {state_dir} is still running "
                           f"({', '.join(str(e['pid']) for e in old['processes'].values())}); "
                           "stop it first: python cli.py cluster down")
    if num_cpus is not None and num_cpus < 1:
        raise ClusterError(f"--num-cpus: must be >= 1, got {num_cpus}")
    ports = (("--port", host, port), ("--dashboard-port", host, dashboard_port),
             ("--mlflow-port", mlflow_host, mlflow_port))
    for flag, _, p in ports:
        if not 0 < p < 65536:
            raise ClusterError(f"{flag}: must be a port number in 1..65535, got {p}")
    if backend_store_uri is not None:
        check_backend_store_uri(backend_store_uri)
    for flag, h, p in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((h, p))
            except OSError:
                raise ClusterError(f"{flag} {p}: the port is in use on {h}; choose another") from None


def up(state_dir: Path | None = None, *, host: str = "127.0.0.1", mlflow_host: str = "127.0.0.1",
       num_cpus: int | None = None, port: int = GCS_PORT, dashboard_port: int = DASHBOARD_PORT,
       mlflow_port: int = MLFLOW_PORT, backend_store_uri: str | None = None,
       artifacts_destination: str | None = None, timeout_s: float = 240) -> dict[str, Any]:
    """Start a Ray head and an MLflow tracking server; returns the recorded state.

    ``host`` is where the Ray dashboard (job submission) listens and ``mlflow_host`` the tracking
    server: 127.0.0.1 keeps both on this machine; a multi-node cluster needs an address workers reach.
    The tracking store defaults to an sqlite database and an artifact folder in the state folder.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _check_can_start(state_dir, num_cpus, host, mlflow_host, port, dashboard_port, mlflow_port, backend_store_uri)
    token = ensure_token(token_path())
    env = {**os.environ, **auth_env(token)}
    # Jobs' `python` is this environment's: they inherit the head's PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    # A temp dir of its own: ray.init() elsewhere on this machine looks for /tmp/ray's cluster and
    # must not find this one. Short, as Ray's socket paths must fit 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    # Logical CPUs are accounting: a trial holds workers + 1 (sweep/resources.py), so at least 3 for 2 workers.
    cpus = num_cpus or max(os.cpu_count() or 1, 4)
    ray_cmd = [_bin("ray"), "start", "--head", "--block", "--port", str(port), "--dashboard-host", host,
               "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()),
               "--temp-dir", temp_dir, "--num-cpus", str(cpus), "--disable-usage-stats"]
    store = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    artifacts = artifacts_destination or str(state_dir / "mlartifacts")
    mlflow_cmd = [_bin("mlflow"), "server", "--backend-store-uri", store, "--artifacts-destination", artifacts,
                  "--host", mlflow_host, "--port", str(mlflow_port), "--workers", "1"]
    state: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"), "token_path": str(token),
                             "temp_dir": temp_dir, "processes": {}}
    state["processes"]["ray"] = _spawn(ray_cmd, state_dir / "ray-head.log", env)
    write_json_atomic(state_dir / STATE_FILE, state)  # from now on `down` can stop what runs, whatever happens next
    try:
        state["processes"]["mlflow"] = _spawn(mlflow_cmd, state_dir / "mlflow-server.log", env)
        write_json_atomic(state_dir / STATE_FILE, state)
        # Bound to every interface: record the address other nodes reach (MLflow allows private IPs).
        reach = {h: _primary_ip() if h in ("0.0.0.0", "::") else h for h in (host, mlflow_host)}
        state.update(dashboard=f"http://{reach[host]}:{dashboard_port}", gcs_port=port,
                     tracking_uri=f"http://{reach[mlflow_host]}:{mlflow_port}")
        write_json_atomic(state_dir / STATE_FILE, state)
        bearer = {"Authorization": f"Bearer {token.read_text().strip()}"}
        _wait_http(f"{state['dashboard']}/api/version", state["processes"]["ray"], bearer, timeout_s, "the Ray head")
        _wait_http(f"{state['tracking_uri']}/health", state["processes"]["mlflow"], {}, timeout_s, "the MLflow server")
    except BaseException as exc:
        down(state_dir)  # a half-started cluster is of no use: stop what this call started
        if isinstance(exc, ClusterError):
            raise ClusterError(f"{exc}\n(stopped the processes `cluster up` had started)") from None
        raise
    return state


# Schemes of MLflow's database-backed tracking stores (SQLAlchemy URLs); a plain path is a file store.
BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_backend_store_uri(uri: str) -> None:
    """ClusterError naming --backend-store-uri unless MLflow's server can open it: a database URL of a
    known scheme whose driver is installed here."""
    scheme, sep, _ = uri.partition("://")
    if uri.startswith("/") or scheme == "file":
        return  # MLflow's file store (a folder)
    dialect, _, driver = scheme.partition("+")
    if not sep or dialect not in BACKEND_SCHEMES:
        raise ClusterError(f"--backend-store-uri {uri!r}: expected a database URL, e.g. "
                           "sqlite:////abs/mlflow.db or postgresql://USER:PASSWORD@HOST/DB "
                           f"(schemes: {', '.join(BACKEND_SCHEMES)}), or an absolute folder path")
    modules = {"postgresql": ("psycopg2", "psycopg"), "mysql": ("pymysql", "MySQLdb"), "mssql": ("pyodbc", "pymssql")}
    wanted = (driver,) if driver else modules.get(dialect, ())
    if wanted and not any(importlib.util.find_spec(m) for m in wanted):
        raise ClusterError(f"--backend-store-uri {uri!r}: MLflow needs a {dialect} driver in this environment "
                           f"({' or '.join(wanted)}); e.g. .venv/bin/pip install "
                           f"{'psycopg2-binary' if dialect == 'postgresql' else wanted[0]}")


def _tree(entry: dict[str, Any]) -> list:
    p = _process(entry)
    if p is None:
        return []
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def processes(state_dir: Path | None = None) -> list:
    """The recorded processes that still run, with their descendants (psutil.Process objects)."""
    state = read_state((state_dir or default_state_dir()).resolve())
    return [p for e in (state or {}).get("processes", {}).values() for p in _tree(e)]


def down(state_dir: Path | None = None, timeout_s: float = 30) -> list[int]:
    """Stop the recorded processes and their descendants: SIGTERM to each recorded process, after 5 s to every
    descendant left, after ``timeout_s`` more SIGKILL. Only processes this state folder recorded (PID and start
    time match) are touched. Returns the PIDs stopped."""
    state_dir = (state_dir or default_state_dir()).resolve()
    state = read_state(state_dir)
    if state is None:
        return []
    trees = [_tree(e) for e in state["processes"].values()]
    for tree in trees:
        with contextlib.suppress(IndexError, psutil.Error):
            tree[0].send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
    everything = [p for tree in trees for p in tree]
    _, alive = psutil.wait_procs(everything, timeout=5)
    # MLflow's job consumers outlive their server; SIGTERM each process left, then wait.
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(alive, timeout=timeout_s)
    # Children started while stopping (e.g. a worker Ray was spawning) belong to the trees too.
    for p in list(alive):
        with contextlib.suppress(psutil.Error):
            alive += [c for c in p.children(recursive=True) if c not in alive]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    if state.get("temp_dir"):
        try:
            save_job_logs(Path(state["temp_dir"]), state_dir / JOB_LOGS)
        except OSError as exc:  # keep stopping: the processes are gone, the state must go too
            print(f"warning: could not save the job logs to {state_dir / JOB_LOGS}: {exc}", file=sys.stderr)
        shutil.rmtree(state["temp_dir"], ignore_errors=True)  # Ray's session logs of this head
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return [p.pid for p in everything]


def save_job_logs(temp_dir: Path, dest: Path) -> list[Path]:
    """Copy each job's driver log out of the head's Ray temp folder (which `down` deletes) to
    ``dest/<job id>.log``, where `cluster logs` finds it once the head is gone."""
    saved = []
    for log in sorted(temp_dir.glob("session_*/logs/job-driver-*.log")):
        dest.mkdir(parents=True, exist_ok=True)
        saved.append(shutil.copyfile(log, dest / log.name.removeprefix("job-driver-")))
    return saved


def status(state_dir: Path | None = None) -> dict[str, Any]:
    state_dir = (state_dir or default_state_dir()).resolve()
    state = read_state(state_dir)
    if state is None:
        return {"state_dir": str(state_dir), "running": False}
    alive = {name: _process(e) is not None for name, e in state["processes"].items()}
    return {**state, "state_dir": str(state_dir), "running": all(alive.values()), "alive": alive}


def client_env(state_dir: Path | None = None, address: str | None = None) -> dict[str, str]:
    """RAY_API_SERVER_ADDRESS (the dashboard, for `ray job ...`), the token settings and
    MLFLOW_TRACKING_URI of the cluster recorded in ``state_dir``, or of ``address`` and this environment
    (whose token may be in RAY_AUTH_TOKEN itself, as on a client machine: the README's multi-node setup)."""
    state = read_state((state_dir or default_state_dir()).resolve()) or {}
    if not state.get("token_path") and os.environ.get("RAY_AUTH_TOKEN"):
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}
    else:
        env = auth_env(Path(state.get("token_path") or token_path()))
    address = (address or state.get("dashboard") or os.environ.get("RAY_API_SERVER_ADDRESS")
               or os.environ.get("RAY_ADDRESS"))
    if not address:
        raise ClusterError("no cluster address: pass --address http://HEAD:8265, set RAY_API_SERVER_ADDRESS, "
                           "or start one with `python cli.py cluster up`")
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"--address {address!r}: give the head's dashboard URL, e.g. http://HEAD:8265 "
                           "(job submission goes through the dashboard, not the GCS port)")
    env["RAY_API_SERVER_ADDRESS"] = address
    if state.get("tracking_uri"):
        env["MLFLOW_TRACKING_URI"] = state["tracking_uri"]
    return env


def runtime_env(tracking_uri: str | None, project_dir: str | Path | None) -> dict[str, Any]:
    """The job's runtime_env: the upload excludes, and the tracking URI and project folder as env_vars."""
    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri, PROJECT_DIR_ENV: str(project_dir) if project_dir else None}
    return {"excludes": upload_excludes(), "env_vars": {k: v for k, v in env_vars.items() if v}}


def submit_command(command: list[str], *, address: str, runtime: dict[str, Any], working_dir: Path,
                   submission_id: str) -> list[str]:
    """The `ray job submit --no-wait` command line for ``command``."""
    if not command:
        raise ClusterError("no command to submit; give it after --, e.g. submit -- python cli.py sweep")
    return [_bin("ray"), "job", "submit", "--address", address, "--working-dir", str(working_dir),
            "--runtime-env-json", json.dumps(runtime), "--submission-id", submission_id, "--no-wait", "--", *command]


def submit(command: list[str], *, state_dir: Path | None = None, address: str | None = None,
           tracking_uri: str | None = None, project_dir: str | Path | None = None, wait: bool = True,
           working_dir: Path = PROJECT_ROOT, retry_s: float = 120) -> tuple[str, int]:
    """Submit ``command`` as a Ray job; returns (submission id, exit status: 0 once submitted, or with
    ``wait``, 0 when the job SUCCEEDED).

    The tracking URI is ``tracking_uri``, else the recorded server's, else $MLFLOW_TRACKING_URI. The
    project folder (where relative paths resolve: data, results) defaults to this checkout, which
    suits a one-machine cluster; on several nodes it must be a folder every node shares.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    env = {**os.environ, **client_env(state_dir, address)}
    uri = tracking_uri or env.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:") and not uri.startswith("sqlite:////"):
        raise ClusterError(f"--tracking-uri {uri!r}: a job runs in another folder; give an absolute sqlite path "
                           "(sqlite:////abs/mlflow.db) or the tracking server's http:// URI")
    if project_dir is not None and not Path(project_dir).is_absolute():
        raise ClusterError(f"--project-dir {project_dir!r}: must be an absolute path (as every node sees it)")
    project = Path(project_dir) if project_dir else Path.cwd().resolve()
    submission_id = f"resnet-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    cmd = submit_command(command, address=env["RAY_API_SERVER_ADDRESS"], runtime=runtime_env(uri, project),
                         working_dir=working_dir, submission_id=submission_id)
    print("$ " + shlex.join(cmd), file=sys.stderr)
    deadline = time.monotonic() + retry_s
    while True:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        # A head that has just started may not have its job agent yet; Ray asks to try again.
        if done.returncode == 0 or "try again later" not in done.stderr + done.stdout or time.monotonic() > deadline:
            break
        time.sleep(3)
    print(done.stdout + done.stderr, end="", file=sys.stderr)
    if done.returncode != 0:
        return submission_id, done.returncode
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "last_job").write_text(submission_id)
    if not wait:
        return submission_id, 0
    job_command("logs", submission_id, state_dir=state_dir, address=address, follow=True)
    status = job_info(submission_id, env)["status"]
    print(f"job {submission_id}: {status}", file=sys.stderr)
    return submission_id, 0 if status == "SUCCEEDED" else 1


def job_command(action: str, job_id: str | None, *, state_dir: Path | None = None, address: str | None = None,
                follow: bool = False) -> int:
    """`ray job logs|status|stop <id>` against the cluster; the id defaults to the last submitted job."""
    state_dir = (state_dir or default_state_dir()).resolve()
    last = state_dir / "last_job"
    job_id = job_id or (last.read_text().strip() if last.is_file() else None)
    if not job_id:
        raise ClusterError("no job id given and none submitted from here yet (python cli.py submit -- ...)")
    saved = state_dir / JOB_LOGS / f"{job_id}.log"
    if action == "logs" and address is None and read_state(state_dir) is None and saved.is_file():
        sys.stdout.write(saved.read_text())  # the head `cluster up` started is down; its copy of the log
        return 0
    env = {**os.environ, **client_env(state_dir, address)}
    cmd = [_bin("ray"), "job", action, "--address", env["RAY_API_SERVER_ADDRESS"], job_id]
    if follow and action == "logs":
        cmd.append("--follow")
    return subprocess.run(cmd, env=env).returncode


def job_info(job_id: str, env: dict[str, str]) -> dict[str, Any]:
    """The job's record from the Jobs REST API (``status``: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    token = env.get("RAY_AUTH_TOKEN") or Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    req = urllib.request.Request(f"{env['RAY_API_SERVER_ADDRESS']}/api/jobs/{job_id}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
