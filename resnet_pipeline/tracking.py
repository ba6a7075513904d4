"""Every MLflow call of the project lives here (STYLE.md: side effects at the edges).

The driver creates (or resumes) the run and owns its status; the rank-0 training worker logs
metrics and the final model to it by run id. Nothing here is imported by the models or the loop.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

T = TypeVar("T")

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else an sqlite file in the current directory.

    The path is made absolute here, on the driver: Ray workers change directory.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry a store call that failed because another process holds the sqlite lock."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.05 * 2**i * (1 + random.random()))
    raise AssertionError("unreachable")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's param value limit
    return out


def start_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              parent_run_id: str | None = None) -> tuple[str, str | None]:
    """Create the run named ``run_name`` in ``experiment``, or find the existing one.

    Returns (run_id, previous status): None for a new run; FINISHED means there is nothing left to
    do; RUNNING/FAILED/KILLED means the run is continued (set RUNNING again).
    """
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    exp = _retry(lambda: client.get_experiment_by_name(experiment))
    exp_id = exp.experiment_id if exp else _retry(lambda: client.create_experiment(experiment))
    found = _retry(lambda: client.search_runs([exp_id], filter_string=f"attributes.run_name = '{run_name}'",
                                              max_results=1, order_by=["attributes.start_time DESC"]))
    if found:
        run = found[0]
        status = run.info.status
        if status != FINISHED:
            _retry(lambda: client.update_run(run.info.run_id, status=RUNNING))
        return run.info.run_id, status
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=all_tags))
    flat = _flatten(params)
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        _retry(lambda: client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]]))
    _retry(lambda: client.log_batch(run.info.run_id, tags=[RunTag("resumable", "true")]))
    return run.info.run_id, None


def child_runs(uri: str, parent_run_id: str) -> list:
    """Runs whose parent is ``parent_run_id`` (the trials of a sweep)."""
    client = _client(uri)
    parent = _retry(lambda: client.get_run(parent_run_id))
    return _retry(lambda: client.search_runs([parent.info.experiment_id],
                                             filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                             max_results=10_000))


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _retry(lambda: _client(uri).get_metric_history(run_id, key))]


def log_artifacts(uri: str, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
    _retry(lambda: _client(uri).log_artifacts(run_id, str(folder), artifact_path))


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
    _retry(lambda: _client(uri).log_batch(run_id, metrics=batch))


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    _retry(lambda: _client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def set_running(uri: str, run_id: str) -> None:
    _retry(lambda: _client(uri).update_run(run_id, status=RUNNING))


def end_run(uri: str, run_id: str, status: str) -> None:
    _retry(lambda: _client(uri).set_terminated(run_id, status=status))


def get_run(uri: str, run_id: str):
    return _retry(lambda: _client(uri).get_run(run_id))


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str) -> Iterator[None]:
    """Sample CPU, memory (and GPU) use into the run while the block runs (MLflow's monitor)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=2, resume_logging=True,
                                   tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"]


def log_model(uri: str, run_id: str, model: Any, input_example: Any) -> str:
    """Log the trained model (torch.export 'pt2' format: loading it runs no pickled code) with its
    signature inferred from ``input_example`` (batch > 1, as torch.export needs). Returns the URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)
    model = model.eval()
    import torch

    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    active = mlflow.active_run()
    ctx = contextlib.nullcontext() if active and active.info.run_id == run_id else mlflow.start_run(run_id=run_id)
    with ctx, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")  # torch.export, CPU weights
        # Explicit requirements: MLflow's inference would re-import the model in a subprocess (seconds).
        info = mlflow.pytorch.log_model(model, name="model", input_example=input_example, signature=signature,
                                        serialization_format="pt2", pip_requirements=_requirements())
    # Closing our own start_run context marks the run FINISHED; the driver owns the status.
    set_running(uri, run_id)
    return info.model_uri
