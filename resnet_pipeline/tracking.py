"""Every MLflow call of the project lives here, so that side effects stay at the edges.

The driver creates (or resumes) the run and owns its status; the rank-0 training worker logs
metrics and the final model to it by run id. Nothing here is imported by the models or the loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import random
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from resnet_pipeline import environment
from resnet_pipeline.config import ConfigError

T = TypeVar("T")

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# When `start_run` last created or reopened a run: UTC, ISO 8601 with milliseconds (sorts as text).
OPENED_TAG = "opened_at"
# What the MLflow UI opens an experiment on: runs and charts, not GenAI traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A sweep's parent run's artifact: the trial run names of its latest grid (an earlier run of the sweep
# with more depths or seeds left other children under the same parent).
SWEEP_GRID = "sweep_grid.json"

# The project's metric names (what the loop reports and Tune ranks on: train_error, val_error,
# best_val_error, test_top5_error, ...) are MLflow keys namespaced by split, so that the UI groups
# them: train/error, val/error, val/best_error, test/top5_error, test/10crop_error. The training
# window's other numbers are train/lr, train/images_per_s, and so on. The mapping is here only.
_SPLITS = ("train", "val", "test")
_TRAIN_ONLY = ("lr", "images_per_s", "epoch", "data_wait_fraction", "nonfinite_skipped")


def mlflow_key(name: str) -> str:
    """train_error -> train/error, best_val_error -> val/best_error, lr -> train/lr; others as they are."""
    if name == "best_val_error":
        return "val/best_error"
    if name in _TRAIN_ONLY:
        return f"train/{name}"
    split, sep, rest = name.partition("_")
    return f"{split}/{rest}" if sep and split in _SPLITS else name


def project_name(key: str) -> str:
    """`mlflow_key` undone: val/best_error -> best_val_error, train/lr -> lr, test/error -> test_error."""
    split, sep, rest = key.partition("/")
    if not sep or split not in _SPLITS:
        return key
    if key == "val/best_error":
        return "best_val_error"
    return rest if split == "train" and rest in _TRAIN_ONLY else f"{split}_{rest}"


def run_metrics(run) -> dict[str, float]:
    """A run's latest metric values under the project's names (system metrics as MLflow names them)."""
    return {project_name(k): v for k, v in run.data.metrics.items()}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else an sqlite file in the current directory. The path is made
    absolute here, on the driver: Ray workers change directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts (models, figures): for a local sqlite store, beside
    the store, ``<store's folder>/mlruns/<experiment>`` (characters other than letters, digits, ``-``
    and ``_`` as ``_``); else None, MLflow's choice (a tracking server has its own artifact root).

    MLflow's default, ``./mlruns/<id>`` of the current directory at the experiment's creation, is
    wrong for a store shared with other folders: `dvc exp run --temp` or ``--queue`` runs the stages
    in a temporary copy of the repository and deletes it afterwards, and every run of an experiment
    created there would keep its artifacts in the deleted folder.
    """
    if not uri.startswith("sqlite:////"):  # `resolve_tracking_uri` makes a local store's path absolute
        return None
    store = Path(uri[len("sqlite:///"):].partition("?")[0])
    # MLflow reads the location as a URI (it would decode "%20"); keep the folder name plain.
    return str(store.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_-]", "_", experiment))


def _retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry a store call that failed because another process holds the sqlite lock."""
    for i in range(attempts - 1):
        try:
            return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if "locked" not in str(exc).lower():
                raise
            time.sleep(0.05 * 2**i * (1 + random.random()))
    return fn()


class _Client:
    """An MlflowClient whose every method call is retried by `_retry`. One per call costs nothing: MLflow
    caches the store (and its sqlalchemy engine) per URI, and the client holds only the URIs (about 0.1 ms)."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        # The registry named too: else one set earlier in the process (`mlflow.set_registry_uri`, which
        # loading and registering models call) would be used instead of ``uri``'s.
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: _retry(lambda: method(*args, **kwargs))


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
              parent_run_id: str | None = None, match_tag: str | None = None) -> tuple[str, str | None]:
    """Create the run named ``run_name`` in ``experiment``, or find the existing one (with the same
    value of the tag ``match_tag``, when given: e.g. a sweep's configuration digest).

    Returns (run_id, previous status): None for a new run; FINISHED means there is nothing left to
    do; RUNNING/FAILED/KILLED means the run is continued (set RUNNING again). Either way the run's
    ``opened_at`` tag records this call's time: a sweep re-run with the settings of an older one reopens
    that one, which is then the newest (`find_parent_run`) although it started first.
    """
    from mlflow.entities import Param, RunTag

    client = _Client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location(uri, experiment), tags=EXPERIMENT_KIND)
    query = f"attributes.run_name = '{run_name}'"
    if match_tag:
        query += f" and tags.{match_tag} = '{tags[match_tag]}'"
    if parent_run_id:  # a sweep's trial: its name is unique under its parent only
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    opened = _iso()
    if found:
        info = found[0].info
        client.set_tag(info.run_id, OPENED_TAG, opened)
        if info.status != FINISHED:
            client.update_run(info.run_id, status=RUNNING)
        return info.run_id, info.status
    all_tags = {**tags, OPENED_TAG: opened}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    items = list(_flatten(params).items())
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    client.log_batch(run.info.run_id, tags=[RunTag("resumable", "true")])
    return run.info.run_id, None


def _iso(ms: float | None = None) -> str:
    """Now, or ``ms`` after the epoch: UTC, ISO 8601 with milliseconds."""
    at = dt.datetime.now(dt.timezone.utc) if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_dataset(uri: str, run_id: str, name: str, digest: str, source: str) -> None:
    """The run's training data as an MLflow dataset input (the UI's Datasets column): its name, the
    digest of its manifest and where it is."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both readings are the local folder
        warnings.simplefilter("ignore", UserWarning)
        dataset = MetaDataset(resolve_dataset_source(source), name=name, digest=digest[:36])._to_mlflow_entity()
    _Client(uri).log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])


def child_runs(uri: str, parent_run_id: str) -> list:
    """Runs whose parent is ``parent_run_id`` (the trials of a sweep)."""
    client = _Client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10_000)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` (a project name), by step, one value per step: the one logged last. A run resumed from
    a checkpoint logs the steps between that checkpoint and the failure again, and MLflow keeps both."""
    logged = sorted(_Client(uri).get_metric_history(run_id, mlflow_key(key)), key=lambda m: m.timestamp)
    return sorted({m.step: m.value for m in logged}.items())


def log_artifacts(uri: str, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
    _Client(uri).log_artifacts(run_id, str(folder), artifact_path)


def log_dict(uri: str, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    """Write ``data`` as the run's JSON artifact ``artifact_file`` (replacing an earlier one)."""
    _Client(uri).log_dict(run_id, dict(data), artifact_file)


def load_dict(uri: str, run_id: str, artifact_file: str) -> dict[str, Any] | None:
    """The run's JSON artifact ``artifact_file``, or None when it has none."""
    client = _Client(uri)
    if artifact_file not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="mlflow-artifact-") as tmp:
        return json.loads(Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text())


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
    """``metrics`` under the project's names (`mlflow_key`); with ``model_id``, on that logged model too."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(mlflow_key(k), float(v), ts, step, model_id=model_id) for k, v in metrics.items()]
    _Client(uri).log_batch(run_id, metrics=batch)


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    _Client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def set_running(uri: str, run_id: str) -> None:
    _Client(uri).update_run(run_id, status=RUNNING)


def end_run(uri: str, run_id: str, status: str) -> None:
    _Client(uri).set_terminated(run_id, status=status)


def get_run(uri: str, run_id: str):
    return _Client(uri).get_run(run_id)


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str) -> Iterator[None]:
    """Sample CPU, memory (and GPU) use into the run while the block runs (MLflow's monitor)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # A sample every 2 s, each logged: a curve even for a run of a minute (MLflow's default, one
    # averaged point per 10 s x 1, drew a demo run as two points).
    monitor = SystemMetricsMonitor(run_id, sampling_interval=2, samples_before_logging=1, resume_logging=True,
                                   tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def log_model(uri: str, run_id: str, model: Any, input_example: Any, name: str = "model") -> str:
    """Log the trained model as ``name`` (the net's name: resnet56-A), in torch.export's 'pt2' format
    (loading it runs no pickled code), with its signature inferred from ``input_example`` (batch > 1,
    as torch.export needs). Returns the URI."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)
    model = model.eval()
    with torch.no_grad():
        signature = infer_signature(input_example, model(torch.as_tensor(input_example)).numpy())
    active = mlflow.active_run()
    ctx = contextlib.nullcontext() if active and active.info.run_id == run_id else mlflow.start_run(run_id=run_id)
    with ctx, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")  # torch.export, CPU weights
        # Explicit requirements: MLflow's inference would re-import the model in a subprocess (seconds).
        # No serving-input validation: it reloads the saved program and predicts again, about a third
        # of this call's time (docs/benchmarks.md); the output above already came from this model.
        info = mlflow.pytorch.log_model(
            model, name=name, input_example=input_example, signature=signature, serialization_format="pt2",
            pip_requirements=[f"{p}=={v}" for p, v in environment.versions(("torch", "torchvision")).items()],
            validate_serving_input=False)
    # Closing our own start_run context marks the run FINISHED; the driver owns the status.
    set_running(uri, run_id)
    return info.model_uri


# --- evaluation, registry and reports (resnet_pipeline.evaluation / .report) -------------------

class TrackingError(ConfigError):
    """A run, model or registry entry that a command needs is missing; the message names it (the
    CLI reports it in one line, as a ConfigError)."""


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No per-file progress bars while artifacts download (they flood a CLI's output)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def find_parent_run(uri: str, experiment: str | None, run_name: str):
    """The top-level run named ``run_name`` in ``experiment`` (a sweep's parent run) opened last: the sweep that
    ran last under that name, whatever its settings (`start_run`). ``experiment`` None: in any experiment of the
    store. TrackingError lists the sweeps that exist when there is none."""
    client = _Client(uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"MLflow experiment {experiment!r} not found in {uri} (train.experiment); "
                                "run `python cli.py sweep` first, or set MLFLOW_TRACKING_URI to the store that has it")
        ids = [exp.experiment_id]
    runs = client.search_runs(ids, max_results=10_000, order_by=["attributes.start_time DESC"]) if ids else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    # Last opened (`OPENED_TAG`), else last started; both as sortable text.
    found = sorted((r for r in parents if r.info.run_name == run_name), reverse=True,
                   key=lambda r: r.data.tags.get(OPENED_TAG) or _iso(r.info.start_time))
    if not found:
        sweeps = sorted({r.info.run_name for r in parents if "sweep" in r.data.tags})
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise TrackingError(f"no sweep named {run_name!r} in {where} ({uri}); "
                            f"sweeps there: {', '.join(sweeps) or 'none'}")
    return found[0]


def experiment_name(uri: str, experiment_id: str) -> str:
    return _Client(uri).get_experiment(experiment_id).name


def get_run_or_error(uri: str, run_id: str):
    """``get_run``, with a TrackingError naming the run id when it does not exist."""
    try:
        return get_run(uri, run_id)
    except Exception as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") \
                or "not found" in str(exc).lower():
            raise TrackingError(f"MLflow run {run_id!r} not found in {uri}") from None
        raise


def logged_model_id(uri: str, run_id: str, name: str | None = None) -> str | None:
    """The id of the model that run ``run_id`` logged last (under ``name``, when given; MLflow 3
    LoggedModel), or None. A training run logs one, named after its net."""
    client = _Client(uri)
    query = f"source_run_id = '{run_id}'" + (f" AND name = '{name}'" if name else "")
    found = client.search_logged_models([client.get_run(run_id).info.experiment_id], filter_string=query)
    ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
    return max(ready, key=lambda m: m.creation_timestamp).model_id if ready else None


def load_pytorch_model(uri: str, model_uri: str):
    """Load a logged PyTorch model (pt2 format: torch.export, no pickled code runs on load). The
    download goes to a folder removed once the model is in memory (MLflow's own default is a temporary
    folder that it never removes: one model's size in /tmp per load)."""
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _quiet_downloads(), warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
        warnings.filterwarnings("ignore", category=UserWarning)  # pt2 loading warns about torch.export internals
        return mlflow.pytorch.load_model(model_uri, dst_path=tmp)


def download_model(uri: str, model_uri: str, dst: str | Path) -> Path:
    """Copy a model's folder (``runs:/``, ``models:/name@alias``, ``models:/name/1``, ``models:/m-...``)
    into ``dst``; TrackingError names the URI when it does not resolve."""
    import mlflow.artifacts

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _quiet_downloads():
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst),
                                                            tracking_uri=uri))
    except Exception as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") \
                or "not found" in str(exc).lower() or "no such" in str(exc).lower():
            raise TrackingError(f"model {model_uri!r} not found in {uri}: {str(exc).splitlines()[0]}") from None
        raise


def log_model_files(uri: str, model_id: str, folder: str | Path) -> None:
    """Add the files of ``folder`` to a logged model's own folder (e.g. its preprocessing.json)."""
    _Client(uri).log_model_artifacts(model_id, str(folder))


def register_model_version(uri: str, name: str, run_id: str, model_id: str, tags: Mapping[str, str],
                           model_tags: Mapping[str, str] | None = None, description: str | None = None):
    """Register run ``run_id``'s logged model as a version of ``name``, or update the tags of the
    version that already holds it (evaluating a run again adds no duplicate). Returns the version."""
    client = _Client(uri)
    try:
        client.create_registered_model(name, tags=dict(model_tags or {}), description=description)
    except Exception as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
        for k, v in (model_tags or {}).items():
            client.set_registered_model_tag(name, k, v)
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    existing = [v for v in existing if getattr(v, "model_id", None) in (None, model_id)]
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        for k, v in tags.items():
            client.set_model_version_tag(name, version.version, k, str(v))
        return client.get_model_version(name, version.version)
    # mlflow.register_model, not create_model_version: it also records the version on the logged
    # model (its mlflow.modelVersions tag), which the logged model's page reads ("Registered").
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with contextlib.redirect_stderr(io.StringIO()):  # its "Created version ..." line
        version = _retry(lambda: mlflow.register_model(f"models:/{model_id}", name,
                                                       tags={k: str(v) for k, v in tags.items()}))
    return client.get_model_version(name, version.version)


def set_version_description(uri: str, name: str, version: str | int, description: str) -> None:
    _Client(uri).update_model_version(name, str(version), description=description)


def registered_aliases(uri: str) -> list[str]:
    """``models:/<name>@<alias>`` for every alias in the store's registry (what `predict` can take)."""
    found = _Client(uri).search_registered_models(max_results=1000)
    return sorted(f"models:/{m.name}@{alias}" for m in found for alias in (getattr(m, "aliases", None) or {}))


def alias_version(uri: str, name: str, alias: str):
    """The version of ``name`` that holds ``alias``, or None."""
    try:
        return _Client(uri).get_model_version_by_alias(name, alias)
    except Exception as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(uri: str, name: str, alias: str, version: str | int) -> None:
    _Client(uri).set_registered_model_alias(name, alias, str(version))


def metric_timestamps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, wall-clock time in seconds since the epoch) of each logged value of ``key``."""
    return [(m.step, m.timestamp / 1000) for m in _Client(uri).get_metric_history(run_id, mlflow_key(key))]
