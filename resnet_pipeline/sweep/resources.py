"""How a sweep's trials share the cluster: trials at once, and each one's CPUs, GPUs and threads."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_pipeline.config import ConfigError
from resnet_pipeline.sweep.config import SweepConfig
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.ray_launch import TRIAL_CPUS


def trial_threads(cpus: float, node_cpus: float, concurrent: int, trial_cpus: int, workers: int) -> int:
    """torch threads per worker when train.threads_per_worker is 0: the ``concurrent`` trials share the
    cluster's cores (less each trial's driver), and no worker takes more than one node's cores. A run
    alone takes cores / workers (`training.loop`); trials at once would each take that many."""
    return max(1, int(min(cpus // concurrent - trial_cpus, node_cpus) // workers))


@dataclass(frozen=True)
class Placement:
    """How a sweep's trials share the cluster."""

    concurrent: int  # trials at once
    resources: dict[str, float]  # what Tune reserves for each trial's own process
    threads: int  # torch threads per training worker
    gpu_share: float = 1.0  # of a GPU, per worker (in-trial trials on a fraction of one)


def placement(sweep: SweepConfig, train: TrainConfig, in_trial: bool, *, cpus: float, gpus: float,
              node_cpus: float, cpus_per_gpu: int, on_gpus: bool) -> Placement:
    """Trials at once, and each trial's resources and threads, for a cluster of ``cpus`` and ``gpus``
    (``node_cpus``: the largest node's; ``cpus_per_gpu``: on the GPU nodes). Raises ConfigError, before
    any trial starts, when a trial cannot be placed at all."""
    # An in-trial trial is its one worker; a Ray Train trial's driver function holds a CPU beside its workers.
    trial_cpus = 0 if in_trial else TRIAL_CPUS
    per_trial = train.workers + trial_cpus
    if per_trial > cpus:
        raise ConfigError(f"train.workers={train.workers} needs {per_trial} CPUs per trial (workers + the trial's "
                          f"driver) but the Ray cluster has {cpus:g}; lower train.workers or add nodes")
    if on_gpus and gpus < 1:
        raise ConfigError(f"train.use_gpu={train.use_gpu} but the Ray cluster has no GPU; set train.use_gpu: off")
    concurrent = sweep.max_concurrent or max(1, int(cpus // per_trial))
    threads = train.threads_per_worker or trial_threads(cpus, node_cpus, concurrent, trial_cpus, train.workers)
    if on_gpus and in_trial:
        # Several small trials share a GPU (sweep.gpus_per_trial), each with its share of the GPU's cores.
        fraction = sweep.gpu_fraction()
        share = max(1, int(cpus_per_gpu * fraction))
        return Placement(sweep.max_concurrent or max(1, min(int(gpus // fraction), int(cpus // share))),
                         {"CPU": min(share, node_cpus), "GPU": fraction}, train.threads_per_worker or share, fraction)
    if on_gpus:
        # A Ray Train trial takes one GPU per worker: more trials at once than the GPUs hold would wait
        # for a placement that never comes, time out and retry for ever.
        if train.workers > gpus:
            raise ConfigError(f"train.workers={train.workers} with GPUs needs {train.workers} GPUs per trial but the "
                              f"Ray cluster has {gpus:g}; lower train.workers or set train.use_gpu: off")
        concurrent = min(concurrent, int(gpus // train.workers))
    # An in-trial trial asks Ray for the cores its threads use (at most a node's), so that Ray never puts
    # more threads on a node than it has cores. A Ray Train trial's driver asks for one CPU and each of
    # its workers for their own (`ray_launch`); their threads share the cores as computed above.
    return Placement(concurrent, {"CPU": min(threads, node_cpus) if in_trial else 1}, threads)
