"""`python cli.py train`: validate, create or resume the MLflow run, launch the workers, record the status.

Everything is checked before Ray starts. The MLflow run's status is set here and only here:
FINISHED on success, FAILED on an exception, KILLED on Ctrl-C or SIGTERM; never left RUNNING.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import os
import platform
import signal
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from resnet_pipeline import environment
from resnet_pipeline.config import ConfigError, project_relative
from resnet_pipeline.data import dataset_fingerprint, load_manifest
from resnet_pipeline.data.loader import dali_available, loader_spec
from resnet_pipeline.models import ModelConfig, net_label, trial_name
from resnet_pipeline.storage import credentials_in, display, is_uri, join, open_store
from resnet_pipeline.training.checkpoint import CheckpointError, CheckpointManager
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.loop import DataSource
from resnet_pipeline.training.ray_launch import check_local_capacity, cluster_devices, fit_with_ray
from resnet_pipeline.training.worker import run_worker, worker_config


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that cleanup runs and the run is marked KILLED."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise Terminated(f"received signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The tags of a training run that name its dataset: the folder, and `dataset_fingerprint` of its content.
DATA_DIR_TAG, DATA_FINGERPRINT_TAG = "data_dir", "dataset_fingerprint"

# What a resumed run must share with its checkpoints: the model and the optimisation recipe. The rest
# may change between attempts: iterations (train longer), workers and speed settings, bookkeeping.
RECIPE = ("batch_size", "lr", "momentum", "weight_decay", "milestones", "lr_decay", "plateau_patience",
          "plateau_threshold", "lr_scaling", "base_batch_size", "warmup", "warmup_lr", "warmup_until_error",
          "warmup_max_iterations", "seed")


def check_resumable(checkpoints: str | Path, train_cfg: TrainConfig, model_cfg: ModelConfig, run_name: str) -> None:
    """Before anything starts: a run that resumes from checkpoints made with another model or recipe
    would fail on loading the weights, or silently mix two settings; ConfigError names the keys. An
    unreadable latest checkpoint is a ConfigError too (one line from the CLI; it names the file)."""
    try:
        state = CheckpointManager(checkpoints).load_latest()
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from exc
    if state is None or "config" not in state:
        return

    def model_of(values: dict[str, Any]) -> dict[str, Any]:
        m = ModelConfig(**{k: v for k, v in values.items() if k in ModelConfig.__dataclass_fields__})
        return {**dataclasses.asdict(m), "family": m.resolved_family(), "shortcut": m.resolved_shortcut()}

    saved_model, now_model = model_of(state["config"].get("model", {})), model_of(dataclasses.asdict(model_cfg))
    saved_train, now_train = state["config"].get("train", {}), dataclasses.asdict(train_cfg)
    differ = [f"model.{k}: {saved_model[k]!r} there, {v!r} now" for k, v in now_model.items() if saved_model[k] != v]
    differ += [f"train.{k}: {saved_train[k]!r} there, {now_train[k]!r} now" for k in RECIPE
               if k in saved_train and saved_train[k] != now_train[k]]
    if differ:
        raise ConfigError(f"run {run_name!r} resumes from checkpoints in {display(checkpoints)} made with other "
                          f"settings ({'; '.join(differ)}); resume with the same settings, or start a new run "
                          "with another --run-name (train.run_name)")


def default_run_name(model_cfg: ModelConfig, seed: int) -> str:
    """``resnet20-A-s0-20261207-120000``: what tells runs apart first, so that truncated names differ."""
    return f"{trial_name(model_cfg.depth, model_cfg.resolved_shortcut(), seed)}-{dt.datetime.now():%Y%m%d-%H%M%S}"


# The tag that holds a run's git commit: MLflow's own, which its UI shows in the runs table.
GIT_COMMIT_TAG = "mlflow.source.git.commit"


def environment_tags(workers: int) -> dict[str, str]:
    """Where a run ran: MLflow's standard source tags (git commit, user, entry point) that the UI
    shows in its columns, whether the work tree had uncommitted changes, world size, devices, versions."""
    tags = {GIT_COMMIT_TAG: environment.git_commit(), "git_dirty": environment.git_dirty(),
            "mlflow.user": getpass.getuser(), "mlflow.source.name": "cli.py", "mlflow.source.type": "LOCAL",
            "world_size": str(workers), "python": platform.python_version(), "device": environment.device_name()}
    tags.update({f"version.{pkg}": v for pkg, v in environment.versions(environment.RUN_PACKAGES).items()
                 if v is not None})
    return tags


@dataclass(frozen=True)
class Devices:
    """What training can use: the Ray cluster's when one is given ($RAY_ADDRESS, or one this process
    is connected to), else this machine's."""

    gpus: int
    cpus: int
    cpus_per_gpu: int  # on the GPU nodes (the fewest, on a cluster); 0 without GPUs


def available_devices() -> Devices:
    ray = sys.modules.get("ray")
    if os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return Devices(*cluster_devices())
    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    return Devices(gpus, cpus, cpus // gpus if gpus else 0)


def loader_threads(train_cfg: TrainConfig, backend: str, num_threads: int, devices: Devices,
                   gpu_share: float = 1.0) -> int:
    """DALI threads (torch: loader processes) per training worker. On the CPU, ``data.num_threads`` shared by the
    workers. With DALI on GPUs, about the cores of a GPU's share of its node: nvJPEG decodes on the GPU, but reading,
    the ImageNet resize and the crops keep several CPU threads busy per GPU, and ``num_threads // workers`` (1 with 8
    workers) would starve it. ``gpu_share``: the part of a GPU that each worker has (a sweep's fractional GPUs)."""
    shared = max(1, num_threads // train_cfg.workers)
    if train_cfg.use_gpu != "off" and devices.gpus > 0 and backend in ("auto", "dali-gpu") and dali_available():
        # One core of each GPU's share is left to the training process itself (and a Tune trial's driver).
        return max(shared, int(devices.cpus_per_gpu * gpu_share) - 1)
    return shared


def resolve_workers(train_cfg: TrainConfig) -> TrainConfig:
    """``train.workers: auto`` made a number for the devices at hand (`TrainConfig.resolved`), said once."""
    if train_cfg.workers != "auto":
        return train_cfg
    devices = available_devices()
    gpus, cpus = devices.gpus, devices.cpus
    resolved = train_cfg.resolved(gpus, cpus)
    why = (f"one per GPU ({gpus} found)" if gpus and train_cfg.use_gpu != "off" else f"no GPU in use, {cpus} CPU cores")
    print(f"train.workers: auto -> {resolved.workers} ({why}; the largest count dividing batch {train_cfg.batch_size})")
    return resolved


def data_choices(spec, normalize: str, model_cfg: ModelConfig) -> str:
    """One line: what the data's kind decided (Sec. 4.2 for CIFAR-kind data, Sec. 3.4 for ImageNet-kind)."""
    size = "x".join(map(str, spec.image_size)) if spec.image_size else None
    why = f"images of one size, {size}" if size else "images of several sizes"
    geometry = ("4-pixel pad and random crop, single view" if spec.kind == "cifar" else
                f"random shorter side in {list(spec.resize_range)}, {spec.crop_size}-pixel crops, "
                f"evaluation at shorter side {spec.eval_resize}")
    stem = model_cfg.resolved_stem(spec.input_size)
    return (f"data: {spec.kind} kind ({why}, {spec.num_classes} classes): normalize {spec.normalize}"
            f"{' (auto)' if normalize == 'auto' else ''}, {geometry}; model: {model_cfg.resolved_family()} family, "
            f"depth {model_cfg.depth}, shortcut {model_cfg.resolved_shortcut()}, {stem} stem, "
            f"input {spec.input_size} px")


def check_data_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir).resolve()
    manifest = load_manifest(path)  # raises DataError naming the folder when it is not a prepared dataset
    for split in ("train", "val"):
        if split not in manifest["splits"]:
            raise ConfigError(f"--data {path}: the prepared dataset has no '{split}' split "
                              f"(found {', '.join(manifest['splits'])}); re-run `python cli.py prepare`")
    return path


# `data` keys that only ImageNet-kind data uses: left out of a CIFAR-kind run's params.
IMAGENET_ONLY = ("crop_size", "resize_range", "eval_resize", "color_aug")


def run_description(model_cfg: ModelConfig, train_cfg: TrainConfig, spec, data_path: Path) -> str:
    """The run page's description: what was trained, on what, how long."""
    milestones = ", ".join(f"{m:,}" for m in train_cfg.milestones) or "no milestone"
    return (f"{net_label(model_cfg.depth, model_cfg.resolved_shortcut())}, seed {train_cfg.seed}, on {data_path.name} "
            f"({spec.num_classes} classes, {spec.kind} kind): {train_cfg.iterations:,} iterations at batch "
            f"{train_cfg.batch_size}, lr {train_cfg.lr:g} divided by {1 / train_cfg.lr_decay:g} at {milestones}.")


def resolve_storage(storage_path: str) -> str | Path:
    """``train.storage_path`` made absolute here, on the driver (Ray workers change directory); an
    object-store URI is checked by writing and deleting a small object, before anything starts."""
    if is_uri(storage_path):
        how = ("give a folder, or a URI pyarrow opens (s3://bucket/prefix, gs://bucket/prefix) with the store's "
               "credentials in the environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, "
               "and AWS_ENDPOINT_URL for S3-compatible stores)")
        if credentials_in(storage_path):
            # Tune and MLflow record the config; a secret in it would be written to their files.
            raise ConfigError(f"train.storage_path {display(storage_path)}: credentials in the URI are not accepted, "
                              f"since run records store it; {how}")
        probe = f".write-check-{uuid.uuid4().hex}"
        try:
            store = open_store(storage_path)
            store.write(probe, b"")
            store.delete(probe)
        except (OSError, ValueError, ImportError) as exc:
            cause = str(exc).replace(str(storage_path), display(storage_path))
            raise ConfigError(f"train.storage_path {display(storage_path)}: cannot write there ({cause}); "
                              f"{how}") from None
        return storage_path
    p = Path(storage_path).expanduser()
    return p if p.is_absolute() else (Path.cwd() / p).resolve()


def train(train_cfg: TrainConfig, model_cfg: ModelConfig, data_dir: str | Path, *, backend: str = "auto",
          normalize: str = "auto", num_threads: int = 2, aug: dict[str, Any] | None = None, launcher: str = "auto",
          tracking_uri: str | None = None, snapshot: dict[str, Any] | None = None, parent_run_id: str | None = None,
          callbacks: list | None = None, on_report: Callable[[dict[str, float]], None] | None = None,
          gpu_share: float = 1.0, extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one model. Returns a summary dict (run id, name, metrics, checkpoint folder).

    ``launcher``: "ray" (a Ray Train worker group; ``callbacks`` are its RunConfig callbacks), "local" (this process
    trains; ``on_report`` gets the metrics Ray Train would get), or "auto" (Ray when installed). ``aug``: ImageNet-kind
    geometry (`DataConfig.aug`: crop_size, resize_range, eval_resize, color_aug); None keeps the loader's defaults.
    ``gpu_share``: the part of a GPU this run has (a sweep's fractional GPUs per trial), which scales its DALI threads
    (`loader_threads`). ``extra_tags``: more run tags (a sweep's trial: the sweep's name and configuration digest)."""
    from resnet_pipeline import tracking

    train_cfg, data_path, spec, launcher = _check_before_ray(train_cfg, model_cfg, data_dir, normalize, aug, launcher)
    run_name = train_cfg.run_name or default_run_name(model_cfg, train_cfg.seed)
    storage = resolve_storage(train_cfg.storage_path)
    run_dir = join(storage, run_name)
    check_resumable(join(run_dir, "checkpoints"), train_cfg, model_cfg, run_name)
    threads = loader_threads(train_cfg, backend, num_threads, available_devices(), gpu_share)
    src = DataSource(str(data_path), backend, normalize, threads, dict(aug or {}))
    snapshot, shown = _snapshot(snapshot, train_cfg, model_cfg, run_name, spec)

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tags = _run_tags(train_cfg, model_cfg, spec, data_path, run_dir, extra_tags)
    run_id, previous = tracking.start_run(uri, train_cfg.experiment, run_name, snapshot, tags, parent_run_id)
    if previous is None:
        tracking.log_dataset(uri, run_id, data_path.name, tags[DATA_FINGERPRINT_TAG], str(data_path))
    summary = {"run_id": run_id, "run_name": run_name, "run_dir": display(run_dir), "tracking_uri": uri}
    if previous == tracking.FINISHED:
        print(f"run '{run_name}' already finished (MLflow run {run_id}); nothing to do")
        return {**summary, "metrics": tracking.run_metrics(tracking.get_run(uri, run_id)), "resumed": False}
    print(f"{'resuming' if previous else 'starting'} run '{run_name}' (MLflow run {run_id}, {uri})")
    print("resolved config: " + ", ".join(f"{k}={v}" for k, v in shown.items() if k != "run_name"))
    print("model: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(model_cfg).items()))
    config = worker_config(train_cfg, model_cfg, src, str(run_dir), uri, run_id, snapshot)
    status = tracking.FAILED
    try:
        with sigterm_as_interrupt(), tracking.system_metrics(uri, run_id):
            if launcher == "ray":
                fit_with_ray(config, train_cfg.workers, train_cfg.use_gpu, run_name, storage,
                             train_cfg.max_failures, callbacks, cpus_per_worker=threads)
            else:
                run_worker(config, report_to=on_report)
        status = tracking.FINISHED
    except KeyboardInterrupt:
        status = tracking.KILLED
        raise
    finally:
        tracking.end_run(uri, run_id, status)
    return {**summary, "metrics": tracking.run_metrics(tracking.get_run(uri, run_id)), "resumed": previous is not None}


def _check_before_ray(train_cfg: TrainConfig, model_cfg: ModelConfig, data_dir: str | Path, normalize: str,
                      aug: dict[str, Any] | None, launcher: str) -> tuple[TrainConfig, Path, Any, str]:
    """Everything that can be checked before Ray starts: the configs, the data folder, the loader
    settings against this dataset (e.g. per-pixel mean needs fixed-size images), one batch for every
    worker, and the launcher against what is installed and the machine's capacity. Returns the
    resolved training config, the data folder, the training loader's spec and the launcher."""
    train_cfg.validate()
    model_cfg.validate()
    data_path = check_data_dir(data_dir)
    train_cfg = resolve_workers(train_cfg.for_data(data_path))
    spec = loader_spec(data_path, "train", train=True, batch_size=train_cfg.per_worker_batch,
                       num_shards=train_cfg.workers, normalize=normalize, **(aug or {}))
    if len(spec) == 0:
        raise ConfigError(f"train.batch_size {train_cfg.batch_size} over {train_cfg.workers} workers is larger than "
                          f"the training split of {data_path} ({spec.num_samples} images)")
    print(data_choices(spec, normalize, model_cfg))
    if launcher == "auto":
        try:
            import ray  # noqa: F401
            launcher = "ray"
        except ImportError:
            launcher = "local"
    if launcher == "local" and train_cfg.workers != 1:
        raise ConfigError(f"train.workers={train_cfg.workers} needs Ray (not installed); use --workers 1")
    if launcher == "ray":
        check_local_capacity(train_cfg.workers, train_cfg.use_gpu)
    return train_cfg, data_path, spec, launcher


def _snapshot(snapshot: dict[str, Any] | None, train_cfg: TrainConfig, model_cfg: ModelConfig, run_name: str,
              spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's logged configuration, and its train section as printed: both without the credentials a storage URI may
    carry (the workers get it whole), and with only the data settings that shape this run."""
    snapshot = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                for k, v in (snapshot or {"model": model_cfg}).items()}
    shown = {**dataclasses.asdict(train_cfg), "run_name": run_name, "storage_path": display(train_cfg.storage_path)}
    snapshot.update(train=shown, model=dataclasses.asdict(model_cfg))
    if "data" in snapshot:
        snapshot["data"] = {k: v for k, v in snapshot["data"].items()
                            if not (spec.kind == "cifar" and k in IMAGENET_ONLY)
                            and not (k.startswith("demo_") and snapshot["data"].get("dataset") != "demo")}
    return snapshot, shown


def _run_tags(train_cfg: TrainConfig, model_cfg: ModelConfig, spec: Any, data_path: Path, run_dir: str | Path,
              extra_tags: dict[str, str] | None) -> dict[str, str]:
    """The MLflow run's tags: environment, net, seed, checkpoint folder, and what it trained on (so
    that evaluation finds the same data, and refuses other data)."""
    return {**environment_tags(train_cfg.workers), "depth": str(model_cfg.depth),
            "shortcut": model_cfg.resolved_shortcut(), "family": model_cfg.resolved_family(),
            "seed": str(train_cfg.seed), "run_dir": display(run_dir) if is_uri(run_dir) else project_relative(run_dir),
            DATA_DIR_TAG: str(data_path), DATA_FINGERPRINT_TAG: dataset_fingerprint(data_path),
            "mlflow.note.content": run_description(model_cfg, train_cfg, spec, data_path), **(extra_tags or {})}
