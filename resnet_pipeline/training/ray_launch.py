"""Ray Train wiring: a TorchTrainer whose per-worker function is `run_worker`.

Ray is imported lazily, inside the functions that use it, so this module loads without Ray; the
other Ray users are `sweep` (Tune) and `driver` (which only checks that Ray is installed). Connects
to $RAY_ADDRESS when set, else starts a local instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch

from resnet_pipeline.config import ConfigError
from resnet_pipeline.storage import display, is_uri, open_store

# A Tune trial's driver function holds a logical CPU on top of its workers' own; on a 2-core machine
# 2 workers x 1 CPU would otherwise never be scheduled beside it.
TRIAL_CPUS = 1


def init_ray(workers: int, concurrent_trials: int = 1, trial_cpus: int = TRIAL_CPUS,
             log_to_driver: bool = True) -> None:
    """Connect to $RAY_ADDRESS, or start a local Ray instance sized for ``concurrent_trials`` trials of ``workers``
    workers plus ``trial_cpus`` for each trial's own process (logical CPUs are accounting only; threads are set per
    worker). ``log_to_driver`` streams the workers' and raylet's log lines to this process, printed to whatever
    ``sys.stdout`` is at that moment; a long-lived process that captures stdout for other work (the test session's
    shared instance) turns it off. The lines stay in Ray's session logs."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(logging_level=logging.WARNING, log_to_driver=log_to_driver, configure_logging=True)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **quiet)
        return
    num_cpus = max(os.cpu_count() or 1, concurrent_trials * (workers + trial_cpus))
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls; it
    # listens on 127.0.0.1 only.
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)


def cluster_devices() -> tuple[int, int, int]:
    """(GPUs, CPUs, CPUs per GPU on the GPU node that has the fewest) of the Ray cluster, connecting to
    $RAY_ADDRESS first if need be."""
    import ray

    init_ray(1)
    total = ray.cluster_resources()
    per_gpu = [int(n["Resources"].get("CPU", 0) // n["Resources"]["GPU"]) for n in ray.nodes()
               if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    return int(total.get("GPU", 0)), int(total.get("CPU", 0)), min(per_gpu, default=0)


def check_capacity(workers: int, use_gpu: bool, cpus_per_worker: float = 1) -> None:
    """Fail at once, not wait forever, when the cluster cannot place the worker group."""
    import ray

    total = ray.cluster_resources()
    need_cpu, have_cpu = workers * cpus_per_worker, total.get("CPU", 0)
    if need_cpu > have_cpu:
        raise ConfigError(f"train.workers={workers} needs {need_cpu:g} CPUs but the Ray cluster has {have_cpu:g}; "
                          f"lower train.workers or add nodes")
    if use_gpu and workers > total.get("GPU", 0):
        raise ConfigError(f"train.workers={workers} with GPUs needs {workers} GPUs but the Ray cluster has "
                          f"{total.get('GPU', 0):g}; lower train.workers or set train.use_gpu: off")


def check_local_capacity(workers: int, use_gpu: str) -> None:
    """Before Ray or MLflow start: a local Ray instance is sized to the request (init_ray), so it would
    start more workers than this machine has cores (or GPUs) and crawl; refuse that. A cluster
    ($RAY_ADDRESS, or one already connected) is checked by check_capacity once connected."""
    ray = sys.modules.get("ray")
    if os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return
    gpus = torch.cuda.device_count()
    on_gpus = use_gpu == "on" or (use_gpu == "auto" and gpus > 0)
    unit, have = ("GPUs", gpus) if on_gpus else ("CPU cores", os.cpu_count() or 1)
    if workers > have:
        raise ConfigError(f"train.workers={workers} needs {workers} {unit} but this machine has {have} and no Ray "
                          f"cluster is given (RAY_ADDRESS); lower train.workers or set RAY_ADDRESS to a cluster "
                          f"that has them")


def check_storage(storage_path: str | Path) -> None:
    """On a cluster of several nodes, ``storage_path`` must be one place every node sees: Ray Train
    restores a restarted worker group, possibly on other nodes, from the checkpoints there. A marker
    written here (a file in the folder, or an object under the URI) must be visible from every alive
    node, else ConfigError names the nodes. One node: nothing to check (the single-machine default is local)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    marker = f".shared-check-{uuid.uuid4().hex}"
    store = open_store(storage_path)
    store.write(marker, b"written by the driver; every node must see this\n")
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(storage_path), marker) for n in nodes], timeout=120)
    finally:
        store.delete(marker)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        how = ("an object-store URI every node can reach with the same credentials" if is_uri(storage_path) else
               "a folder every node mounts at the same path (e.g. NFS), or an object-store URI (s3://bucket/prefix)")
        raise ConfigError(f"train.storage_path is required on a cluster of {len(nodes)} nodes: "
                          f"{display(storage_path)} is not visible from node(s) {', '.join(blind)}; set "
                          f"train.storage_path (or --storage-path) to {how}")


def _sees(storage_path: str, name: str) -> bool:
    try:
        return name in open_store(storage_path).names()
    except OSError:  # e.g. no credentials for the object store on this node
        return False


def ray_storage(storage_path: str | Path) -> dict[str, Any]:
    """RunConfig's storage arguments: a folder as is; a URI resolved here to a pyarrow filesystem and
    a path in it (Ray would re-parse the URI, and its query, on every process)."""
    if not is_uri(storage_path):
        return {"storage_path": str(storage_path)}
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(str(storage_path))
    return {"storage_path": path, "storage_filesystem": fs}


def _ray_worker_fn(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from resnet_pipeline.training.worker import run_worker

    # Ray Train logs every report at INFO from a logger named after its file; keep the console to
    # our one line per window.
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    run_worker(config, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
               device=ray.train.torch.get_device(), report_to=ray.train.report)


def use_gpu_resolved(use_gpu: str) -> bool:
    if use_gpu in ("on", "off"):
        return use_gpu == "on"
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


@contextlib.contextmanager
def _ctrl_c_as_interrupt() -> Iterator[None]:
    """Ray Train's fit(), in the main thread, installs its own SIGINT handler and leaves it there: on
    Ctrl-C it aborts the worker group and exits through SystemExit, and a later Ctrl-C in this process
    calls the finished run's controller. Here the abort is a KeyboardInterrupt, as Ctrl-C is everywhere
    else (the MLflow run ends KILLED), and the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # a Tune trial: Ray registers none
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as exc:  # only Ray Train's handler exits from within fit()
        raise KeyboardInterrupt("the Ray Train run was aborted by Ctrl-C") from exc
    finally:
        signal.signal(signal.SIGINT, previous)


def fit_with_ray(config: dict[str, Any], workers: int, use_gpu: str, run_name: str, storage_path: str | Path,
                 max_failures: int, extra_callbacks: list | None = None, cpus_per_worker: int = 1) -> dict[str, Any]:
    """Run the worker group to completion; returns the last reported metrics of rank 0.

    ``cpus_per_worker``: on GPUs, the CPUs each worker reserves (its DALI threads, `loader_threads`),
    so that Ray places no more decoding threads on a node than it has cores; on the CPU each worker
    reserves one (its threads are set per worker, see `init_ray`)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(workers)
    gpu = use_gpu_resolved(use_gpu)
    cpus = max(1, cpus_per_worker) if gpu else 1
    check_capacity(workers, gpu, cpus)
    check_storage(storage_path)
    trainer = TorchTrainer(
        _ray_worker_fn, train_loop_config=config, torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=run_name, **ray_storage(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             callbacks=extra_callbacks or None, logging_config=LoggingConfig("WARNING")))
    with _ctrl_c_as_interrupt():
        result = trainer.fit()
    if result.error:
        raise result.error
    return dict(result.metrics or {})
