"""Ray Tune execution: one Tune trial per training run, placed on the cluster by `resources.placement`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any

from resnet_pipeline.models import ModelConfig
from resnet_pipeline.storage import join
from resnet_pipeline.sweep.config import SweepConfig
from resnet_pipeline.sweep.resources import Placement, placement
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.ray_launch import TRIAL_CPUS


def _trial_fn(config: dict[str, Any]) -> None:
    """A Tune trial: one training run, in this process (reporting with tune.report) or on a Ray Train
    worker group (a TorchTrainer reporting to Tune through TuneReportCallback)."""
    from ray import tune

    from resnet_pipeline.training.driver import train

    base, t = config["base"], config["trial"]
    train_cfg = TrainConfig(**{**base["train"], "seed": t["seed"], "run_name": t["run_name"]})
    model_cfg = ModelConfig(**{**base["model"], "depth": t["depth"], "shortcut": t["shortcut"], "family": t["family"]})
    if base["in_trial"]:
        launch: dict[str, Any] = {"launcher": "local", "on_report": tune.report}
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        launch = {"launcher": "ray", "callbacks": [TuneReportCallback()]}
    train(train_cfg, model_cfg, base["data_dir"], backend=base["backend"], normalize=base["normalize"],
          num_threads=base["num_threads"], aug=base["aug"], tracking_uri=base["tracking_uri"],
          parent_run_id=base["parent_run_id"], extra_tags=base["tags"],
          # The sweep section is the parent run's; a trial's own settings are its model.* and train.*.
          snapshot={k: v for k, v in base["snapshot"].items() if k != "sweep"},
          gpu_share=base.get("gpu_share", 1.0), **launch)


def trial_base(sweep: SweepConfig, train: TrainConfig, model_cfg: ModelConfig, data_path: Path, storage: str | Path,
               digest: str, *, backend: str, normalize: str, num_threads: int, aug: dict[str, Any] | None,
               uri: str, parent_id: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """What every trial of the sweep shares (`_trial_fn`'s ``config["base"]``)."""
    # The storage path made absolute here (Tune runs each trial in its own working directory),
    # one folder per sweep and settings: trials of other sweeps have the same names.
    return {"train": {**dataclasses.asdict(train), "storage_path": str(join(storage, f"{sweep.name}-{digest}"))},
            "model": dataclasses.asdict(model_cfg), "data_dir": str(data_path), "backend": backend,
            "normalize": normalize, "num_threads": num_threads, "aug": dict(aug or {}), "tracking_uri": uri,
            "parent_run_id": parent_id, "snapshot": snapshot, "tags": {"sweep": sweep.name, "config_digest": digest},
            "in_trial": sweep.in_trial(train.workers)}


def _place_on_cluster(sweep: SweepConfig, train: TrainConfig, in_trial: bool, storage: str | Path) -> Placement:
    """Start (or join) Ray, check that its nodes see ``storage``, and place the trials on its resources."""
    import ray

    from resnet_pipeline.training.driver import available_devices
    from resnet_pipeline.training.ray_launch import check_storage, init_ray, use_gpu_resolved

    init_ray(train.workers, sweep.max_concurrent or 1, trial_cpus=0 if in_trial else TRIAL_CPUS)
    check_storage(storage)
    resources = ray.cluster_resources()
    on_gpus = use_gpu_resolved(train.use_gpu)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                    default=resources.get("CPU", 1))
    return placement(sweep, train, in_trial, cpus=resources.get("CPU", 1), gpus=resources.get("GPU", 0),
                     node_cpus=node_cpus, cpus_per_gpu=available_devices().cpus_per_gpu if on_gpus else 0,
                     on_gpus=on_gpus)


def _scheduler(sweep: SweepConfig, train: TrainConfig) -> Any:
    if not sweep.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # max_t one past the end: a trial that reaches the end finishes by itself (it still logs its
    # model after its last report) instead of being stopped by the scheduler at that report.
    return ASHAScheduler(time_attr="iteration", metric="val_error", mode="min", max_t=train.iterations + 1,
                         grace_period=min(train.eval_every, train.iterations), reduction_factor=2)


def run_tune(todo: list[dict[str, Any]], base: dict[str, Any], sweep: SweepConfig, train: TrainConfig,
             storage: str | Path) -> dict[str, str]:
    """Run the trials; returns the errors by trial run name (empty when no trial raised)."""
    from ray import tune

    from resnet_pipeline.training.driver import sigterm_as_interrupt
    from resnet_pipeline.training.ray_launch import ray_storage

    in_trial = base["in_trial"]
    place = _place_on_cluster(sweep, train, in_trial, storage)
    base["gpu_share"] = place.gpu_share
    base["train"] = {**base["train"], "threads_per_worker": place.threads}
    tuner = tune.Tuner(
        tune.with_resources(_trial_fn, place.resources),
        param_space={"base": base, "trial": tune.grid_search(todo)},
        # reuse_actors: the next trial runs in the finished one's process, its imports already done.
        # Only for in-trial trials that end by themselves: a trial ASHA stops (or a Ray Train trial,
        # whose thread waits on its controller) may not wind down within Tune's reset timeout.
        tune_config=tune.TuneConfig(max_concurrent_trials=place.concurrent, scheduler=_scheduler(sweep, train),
                                    reuse_actors=in_trial and not sweep.asha),
        run_config=tune.RunConfig(name=f"{sweep.name}-tune-{dt.datetime.now():%Y%m%d-%H%M%S}",
                                  **ray_storage(storage), verbose=0,
                                  # In-trial, a crashed trial is retried by Tune (it resumes from its
                                  # checkpoints); Ray Train restarts its own workers.
                                  failure_config=tune.FailureConfig(
                                      max_failures=train.max_failures if in_trial else 0)),
    )
    # Ctrl-C (and SIGTERM) stop the sweep with KeyboardInterrupt, as they stop `train`; Tune's own
    # handler would end tuner.fit() normally, and the stage would look complete to DVC.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with sigterm_as_interrupt():
        results = tuner.fit()
    return {r.config["trial"]["run_name"]: str(r.error) for r in results if r.error}
