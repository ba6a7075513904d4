"""Ray Tune over depth x shortcut x seed: one MLflow parent run, one child run per trial.

Each trial is a training run (`training.driver.train`) in a Tune trial process. A trial of one
worker trains in that process and reports to Tune directly; a trial of several workers runs a Ray
Train TorchTrainer with `TuneReportCallback` (`sweep.trial_launcher`). Everything is
validated before Ray starts. Trials are named `<sweep>-<family><depth>-<shortcut>-seed<seed>`, so
re-running the same sweep finds its finished trials in MLflow (skipped) and its unfinished ones'
checkpoints (resumed). A trial's name carries a digest of everything that shapes its result (the
train, model and data settings), so a changed parameter trains anew instead of reusing old runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from resnet_pipeline.config import ConfigError, check_name
from resnet_pipeline.data.config import DataConfig, DataError
from resnet_pipeline.models import SHORTCUTS, ModelConfig, infer_family, trial_name
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.ray_launch import TRIAL_CPUS


TRIAL_LAUNCHERS = ("auto", "in-trial", "ray-train")


@dataclass
class SweepConfig:
    """The `sweep` section of params.yaml."""

    depths: list[int] = field(default_factory=lambda: [20, 32, 44, 56, 110])
    shortcuts: list[str] = field(default_factory=lambda: ["plain", "A"])
    # Nets beyond the grid, as "<shortcut>-<depth>" (e.g. the ImageNet Table 3 rows "B-50", "C-34").
    include: list[str] = field(default_factory=list)
    seeds: int = 1  # trials use seeds train.seed .. train.seed + seeds - 1
    name: str = "cifar10-table6"
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs (or GPUs) allow
    asha: bool = False  # ASHA early stopping on validation error
    out: str = "metrics/sweep"  # summary.json and summary.csv (a DVC metrics output)
    # in-trial: the Tune trial's process trains (one worker; Tune retries a failed trial, which resumes
    # from its checkpoints); ray-train: a Ray Train worker group per trial (restarts failed workers);
    # auto: in-trial for train.workers 1, else ray-train.
    trial_launcher: str = "auto"
    # GPUs per one-worker (in-trial) trial: a fraction packs several trials on one GPU. auto: 0.25 for
    # the CIFAR nets (a ResNet-110 at batch 128 uses a small part of a modern GPU), 1 for ImageNet's.
    # Trials of several workers take one GPU per worker.
    gpus_per_trial: float | Literal["auto"] = "auto"

    def validate(self) -> None:
        self.included()  # raises on a malformed entry
        try:
            infer_family(self.all_depths)
        except ValueError as exc:
            raise ConfigError(f"sweep.depths: {exc}") from None
        if not self.shortcuts:
            raise ConfigError(f"sweep.shortcuts: empty; choose from {', '.join(SHORTCUTS)}")
        bad = [s for s in self.shortcuts if s not in SHORTCUTS]
        if bad:
            raise ConfigError(f"sweep.shortcuts: unknown {', '.join(map(repr, bad))}; valid are {', '.join(SHORTCUTS)}")
        if self.seeds < 1:
            raise ConfigError(f"sweep.seeds: must be >= 1, got {self.seeds}")
        if self.max_concurrent < 0:
            raise ConfigError(f"sweep.max_concurrent: must be >= 0 (0: automatic), got {self.max_concurrent}")
        check_name("sweep.name", self.name, "cifar-plain-vs-resnet")
        if self.gpus_per_trial != "auto" and not 0 < self.gpus_per_trial <= 1:
            raise ConfigError(f"sweep.gpus_per_trial: must be in (0, 1] (a fraction of one GPU) or auto, "
                              f"got {self.gpus_per_trial}")
        if self.trial_launcher not in TRIAL_LAUNCHERS:
            raise ConfigError(f"sweep.trial_launcher: {self.trial_launcher!r} is not valid; use one of "
                              f"{', '.join(TRIAL_LAUNCHERS)}")

    def in_trial(self, workers: int) -> bool:
        """Whether each trial trains in its own Tune process (no Ray Train worker group)."""
        if self.trial_launcher == "in-trial" and workers != 1:
            raise ConfigError(f"sweep.trial_launcher: in-trial runs one worker per trial, but train.workers is "
                              f"{workers}; use auto or ray-train")
        return self.trial_launcher == "in-trial" or (self.trial_launcher == "auto" and workers == 1)

    def gpu_fraction(self) -> float:
        """The GPUs of one in-trial trial (`gpus_per_trial`, auto resolved by the nets' family)."""
        if self.gpus_per_trial != "auto":
            return float(self.gpus_per_trial)
        return 0.25 if self.family == "cifar" else 1.0

    @property
    def all_depths(self) -> list[int]:
        return list(dict.fromkeys([*self.depths, *(d for _, d in self.included())]))

    @property
    def family(self) -> str:
        return infer_family(self.all_depths)

    def included(self) -> list[tuple[str, int]]:
        """``include`` as (shortcut, depth) pairs."""
        pairs = []
        for entry in self.include:
            shortcut, _, depth = str(entry).rpartition("-")
            if shortcut not in SHORTCUTS or not depth.isdigit():
                raise ConfigError(f"sweep.include: {entry!r} is not valid; use '<shortcut>-<depth>' with a shortcut "
                                  f"from {', '.join(SHORTCUTS)}, e.g. 'B-50'")
            pairs.append((shortcut, int(depth)))
        return pairs

    def nets(self) -> list[tuple[int, str]]:
        """(depth, shortcut) of every net: the grid, then ``include``, without repeats."""
        grid = [(d, s) for d, s in itertools.product(self.depths, self.shortcuts)]
        return list(dict.fromkeys([*grid, *((d, s) for s, d in self.included())]))


@dataclass(frozen=True)
class Trial:
    depth: int
    shortcut: str
    seed: int
    family: str

    def run_name(self) -> str:
        """``resnet56-A-s0``, ``plain20-s1``: unique under the sweep's parent run, where the sweep's name
        and configuration digest are (tags); the checkpoints go under ``<storage>/<sweep>-<digest>/``."""
        return trial_name(self.depth, self.shortcut, self.seed)


# The tag of a trial's run that ASHA stopped before the end (the run is KILLED).
STOPPED_EARLY = "stopped_early"

# Settings that do not change what a trial computes: bookkeeping, fault tolerance, naming.
# (log_every shapes results: the ResNet-110 warm-up ends at the first logging window under its error.)
_NOT_RESULT_SHAPING = {"run_name", "experiment", "storage_path", "max_failures", "inject_failure_at", "inject_failure",
                       "keep_checkpoints", "checkpoint_every"}


def config_digest(train: TrainConfig, model_cfg: ModelConfig, data: dict[str, Any]) -> str:
    """6 hex digits identifying the settings that shape a sweep's results."""
    import hashlib

    # Each trial sets its own depth, shortcut and family: the model section's values for them do not count.
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("depth", "shortcut", "family")}
    shaping = {"train": {k: v for k, v in dataclasses.asdict(train).items() if k not in _NOT_RESULT_SHAPING},
               "model": model, "data": data}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:6]


def plan(sweep: SweepConfig, train: TrainConfig) -> list[Trial]:
    sweep.validate()
    sweep.in_trial(train.workers)  # raises when the launcher cannot run train.workers
    return [Trial(d, s, train.seed + i, sweep.family)
            for (d, s), i in itertools.product(sweep.nets(), range(sweep.seeds))]


def _model_cfg(base: ModelConfig, trial: Trial) -> ModelConfig:
    return dataclasses.replace(base, depth=trial.depth, shortcut=trial.shortcut, family=trial.family)


def complexity(model_cfg: ModelConfig, num_classes: int, input_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a model, built on the meta device."""
    import torch

    from resnet_pipeline.models import build_model, count_params, resnet_mult_adds

    with torch.device("meta"):
        model = build_model(model_cfg, num_classes, input_size)
    return count_params(model), resnet_mult_adds(model, input_size)


def calibrate(input_size: int, batch: int, steps: int = 5) -> float:
    """Measured training multiply-adds per second on this machine (forward + backward ~ 3x forward),
    from a few steps of ResNet-20 at the per-worker batch. Used only for --dry-run estimates."""
    import torch

    from resnet_pipeline.models import resnet_cifar, resnet_mult_adds

    model = resnet_cifar(20).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, input_size, input_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()  # the first step warms up the kernels
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 3 * resnet_mult_adds(model, input_size) * batch * steps / (time.perf_counter() - start)


def estimate(trials: list[Trial], model_cfg: ModelConfig, train: TrainConfig, num_classes: int,
             input_size: int, rate: float | None) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        params, macs = complexity(_model_cfg(model_cfg, t), num_classes, input_size)
        compute = macs * 3 * train.iterations * train.batch_size  # multiply-adds, forward + backward
        rows.append({"depth": t.depth, "shortcut": t.shortcut, "seed": t.seed, "params": params, "mult_adds": macs,
                     "train_mult_adds": compute, "estimated_s": compute / rate if rate else None})
    return rows


def _data_shape(data_dir: Path, aug: dict[str, Any] | None = None) -> tuple[int, int, str]:
    """(classes, the side of the model's input, cifar|imagenet kind) of a prepared dataset."""
    from resnet_pipeline.data import load_manifest
    from resnet_pipeline.data.loader import eval_geometry, loader_spec

    manifest = load_manifest(data_dir)
    spec = loader_spec(data_dir, "val", train=False, batch_size=1, normalize="per_channel",  # shape only
                       **eval_geometry(aug))
    return len(manifest["classes"]), spec.input_size, spec.kind


def planned_shape(data: DataConfig) -> tuple[int, int, str]:
    """(classes, input side, kind) that the params promise before the data is prepared: CIFAR-10 and the
    demo are 32-pixel CIFAR-kind data of 10 (demo_classes) classes; an image folder is taken as
    ImageNet-kind data of 1,000 classes at ``data.crop_size``."""
    if data.dataset == "cifar10":
        return 10, 32, "cifar"
    if data.dataset == "demo":
        return data.demo_classes, data.demo_image_size, "cifar" if data.demo_image_size <= 64 else "imagenet"
    return 1000, data.crop_size, "imagenet"


def dry_run(sweep: SweepConfig, train: TrainConfig, model_cfg: ModelConfig, data_dir: str | Path,
            measure: bool = True, aug: dict[str, Any] | None = None,
            data: DataConfig | None = None) -> dict[str, Any]:
    """The trials and their compute, and (``measure``) the time they would take on this machine. The data
    need not be prepared yet: its shape then comes from the ``data`` params (`planned_shape`)."""
    from resnet_pipeline.data import load_manifest
    from resnet_pipeline.training.driver import resolve_workers

    train.validate()
    train = resolve_workers(train)
    trials = plan(sweep, train)
    try:
        load_manifest(data_dir)
        num_classes, input_size, _ = _data_shape(Path(data_dir), aug)
        shape_from = f"the prepared data in {data_dir}"
    except DataError:
        if data is None:
            raise
        num_classes, input_size, _ = planned_shape(data)
        shape_from = f"params (data.dataset {data.dataset}; {data_dir} is not prepared yet)"
    rate = calibrate(input_size, train.per_worker_batch) if measure else None
    rows = estimate(trials, model_cfg, train, num_classes, input_size, rate)
    total = sum(r["estimated_s"] for r in rows) if rate else None
    return {"sweep": sweep.name, "trials": rows, "calibration_mult_adds_per_s": rate,
            "estimated_total_s_one_process": total, "input_size": input_size, "num_classes": num_classes,
            "shape_from": shape_from, "workers": train.workers}


# --- running -----------------------------------------------------------------------------------

def _trial_fn(config: dict[str, Any]) -> None:
    """A Tune trial: one training run, in this process (reporting with tune.report) or on a Ray Train
    worker group (a TorchTrainer reporting to Tune through TuneReportCallback)."""
    from ray import tune

    from resnet_pipeline.training.driver import train

    base, t = config["base"], config["trial"]
    train_cfg = TrainConfig(**{**base["train"], "seed": t["seed"], "run_name": t["run_name"]})
    model_cfg = ModelConfig(**{**base["model"], "depth": t["depth"], "shortcut": t["shortcut"],
                               "family": t["family"]})
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


def trial_threads(cpus: float, node_cpus: float, concurrent: int, trial_cpus: int, workers: int) -> int:
    """torch threads per worker when train.threads_per_worker is 0: the ``concurrent`` trials share the
    cluster's cores (less each trial's driver), and no worker takes more than one node's cores. A run
    alone takes cores / workers (`training.loop`); trials at once would each take that many."""
    share = min(cpus // concurrent - trial_cpus, node_cpus)
    return max(1, int(share // workers))


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


def _run_tune(todo: list[dict[str, Any]], base: dict[str, Any], sweep: SweepConfig, train: TrainConfig,
              storage: str | Path) -> dict[str, str]:
    """Run the trials; returns the errors by trial run name (empty when no trial raised)."""
    import ray
    from ray import tune

    from resnet_pipeline.training.ray_launch import check_storage, init_ray, ray_storage, use_gpu_resolved

    in_trial = base["in_trial"]
    init_ray(train.workers, sweep.max_concurrent or 1, trial_cpus=0 if in_trial else TRIAL_CPUS)
    check_storage(storage)
    resources = ray.cluster_resources()
    on_gpus = use_gpu_resolved(train.use_gpu)
    from resnet_pipeline.training.driver import available_devices

    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                    default=resources.get("CPU", 1))
    place = placement(sweep, train, in_trial, cpus=resources.get("CPU", 1), gpus=resources.get("GPU", 0),
                      node_cpus=node_cpus, cpus_per_gpu=available_devices().cpus_per_gpu if on_gpus else 0,
                      on_gpus=on_gpus)
    concurrent, trial_resources, threads = place.concurrent, place.resources, place.threads
    base["gpu_share"] = place.gpu_share
    base["train"] = {**base["train"], "threads_per_worker": threads}
    scheduler = None
    if sweep.asha:
        from ray.tune.schedulers import ASHAScheduler

        # max_t one past the end: a trial that reaches the end finishes by itself (it still logs its
        # model after its last report) instead of being stopped by the scheduler at that report.
        scheduler = ASHAScheduler(time_attr="iteration", metric="val_error", mode="min", max_t=train.iterations + 1,
                                  grace_period=min(train.eval_every, train.iterations), reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(_trial_fn, trial_resources),
        param_space={"base": base, "trial": tune.grid_search(todo)},
        # reuse_actors: the next trial runs in the finished one's process, its imports already done.
        # Only for in-trial trials that end by themselves: a trial ASHA stops (or a Ray Train trial,
        # whose thread waits on its controller) may not wind down within Tune's reset timeout.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, scheduler=scheduler,
                                    reuse_actors=in_trial and not sweep.asha),
        run_config=tune.RunConfig(name=f"{sweep.name}-tune-{dt.datetime.now():%Y%m%d-%H%M%S}",
                                  **ray_storage(storage), verbose=0,
                                  # In-trial, a crashed trial is retried by Tune (it resumes from its
                                  # checkpoints); Ray Train restarts its own workers.
                                  failure_config=tune.FailureConfig(max_failures=train.max_failures if in_trial else 0)),
    )
    from resnet_pipeline.training.driver import sigterm_as_interrupt

    # Ctrl-C (and SIGTERM) stop the sweep with KeyboardInterrupt, as they stop `train`; Tune's own
    # handler would end tuner.fit() normally, and the stage would look complete to DVC.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with sigterm_as_interrupt():
        results = tuner.fit()
    return {r.config["trial"]["run_name"]: str(r.error) for r in results if r.error}


def run_sweep(sweep: SweepConfig, train: TrainConfig, model_cfg: ModelConfig, data_dir: str | Path, *,
              backend: str = "auto", normalize: str = "auto", num_threads: int = 2,
              aug: dict[str, Any] | None = None, tracking_uri: str | None = None,
              snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    from resnet_pipeline import tracking
    from resnet_pipeline.training.driver import check_data_dir, environment_tags, resolve_storage, resolve_workers

    train.validate()
    train = resolve_workers(train)
    trials = plan(sweep, train)
    for t in trials:
        _model_cfg(model_cfg, t).validate()
    data_path = check_data_dir(data_dir)
    train = train.for_data(data_path)  # auto experiment and storage names, from the data folder
    from resnet_pipeline.training.ray_launch import check_local_capacity

    check_local_capacity(train.workers, train.use_gpu)
    num_classes, input_size, kind = _data_shape(data_path, aug)
    storage = resolve_storage(train.storage_path)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    snap = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in (snapshot or {}).items()}
    from resnet_pipeline.training.checkpoint import display, join

    # The parent's params: what all trials share. Each trial sets its own depth, shortcut and family.
    snap.update(sweep=dataclasses.asdict(sweep),
                model={k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("depth", "shortcut", "family")},
                train={**dataclasses.asdict(train), "storage_path": display(train.storage_path)})
    from resnet_pipeline.data import dataset_fingerprint

    # The data's content, not its folder: prepared again with another split, the trials train again;
    # moved elsewhere, they do not.
    shaping_data = {"dataset": dataset_fingerprint(data_path), "backend": backend, "normalize": normalize}
    if aug and kind == "imagenet":  # the crops only shape ImageNet-kind runs
        shaping_data["aug"] = dict(aug)
    digest = config_digest(train, model_cfg, shaping_data)
    parent_id, previous = tracking.start_run(uri, train.experiment, sweep.name, snap,
                                             {**environment_tags(train.workers), "sweep": sweep.name,
                                              "trials": str(len(trials)), "config_digest": digest},
                                             match_tag="config_digest")
    if previous == tracking.FINISHED:
        tracking.set_running(uri, parent_id)  # e.g. re-run with more seeds: the sweep is open again
    status = tracking.FAILED
    try:
        tracking.log_dict(uri, parent_id, {"trials": [t.run_name() for t in trials]},
                          tracking.SWEEP_GRID)
        # Done: finished, or stopped by ASHA (its decision; a new scheduler, without the old one's rung
        # history, might let the trial run to the end).
        done = {r.info.run_name for r in tracking.child_runs(uri, parent_id)
                if r.info.status == tracking.FINISHED
                or (sweep.asha and r.info.status == tracking.KILLED and r.data.tags.get(STOPPED_EARLY) == "true")}
        todo = [{**dataclasses.asdict(t), "run_name": t.run_name()} for t in trials
                if t.run_name() not in done]
        print(f"sweep '{sweep.name}' (MLflow run {parent_id}): {len(trials)} trials, "
              f"{len(trials) - len(todo)} already done, {len(todo)} to run")
        errors: dict[str, str] = {}
        if todo:
            # The storage path made absolute here (Tune runs each trial in its own working directory),
            # one folder per sweep and settings: trials of other sweeps have the same names.
            base = {"train": {**dataclasses.asdict(train), "storage_path": str(join(storage, f"{sweep.name}-{digest}"))},
                    "model": dataclasses.asdict(model_cfg),
                    "data_dir": str(data_path), "backend": backend, "normalize": normalize,
                    "num_threads": num_threads, "aug": dict(aug or {}), "tracking_uri": uri,
                    "parent_run_id": parent_id, "snapshot": snap,
                    "tags": {"sweep": sweep.name, "config_digest": digest}, "in_trial": sweep.in_trial(train.workers)}
            errors = _run_tune(todo, base, sweep, train, storage)
            # A trial of this run that ASHA stopped (no error) was interrupted, not failed: its run
            # ended RUNNING (actor killed) or FAILED (the stop reached the trainer) and becomes KILLED.
            # Any other run left RUNNING belongs to a trial that died (e.g. its process was killed).
            names = {t["run_name"] for t in todo}
            for r in tracking.child_runs(uri, parent_id):
                if r.info.run_name not in names or r.info.status not in (tracking.RUNNING, tracking.FAILED):
                    continue
                if sweep.asha and r.info.run_name not in errors:
                    tracking.set_tags(uri, r.info.run_id, {STOPPED_EARLY: "true"})
                    tracking.end_run(uri, r.info.run_id, tracking.KILLED)
                elif r.info.status == tracking.RUNNING:
                    tracking.end_run(uri, r.info.run_id, tracking.FAILED)
        summary = summarize(uri, parent_id, sweep, digest, trials, model_cfg, num_classes, input_size)
        _log_to_parent(uri, parent_id, summary, train.iterations)
        out = write_summary(summary, Path(sweep.out))
        tracking.log_artifacts(uri, parent_id, out, "summary")
        for name, e in errors.items():
            print(f"trial {name} failed: {e}")
        # With ASHA, trials it stopped early (KILLED) are the scheduler's decision, not a failure.
        ok = {tracking.FINISHED, tracking.KILLED} if sweep.asha else {tracking.FINISHED}
        incomplete = [f"{r['shortcut']}-{r['depth']} seed {r['seed']}: {r['status']}"
                      for r in summary["trials"] if r["status"] not in ok]
        status = tracking.FINISHED if not errors and not incomplete else tracking.FAILED
        return {**summary, "parent_run_id": parent_id, "tracking_uri": uri, "errors": list(errors.values()),
                "incomplete": incomplete, "out": str(out)}
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = tracking.KILLED if interrupted else tracking.FAILED
        # The trials still running die with Ray; their runs end (KILLED when interrupted) and resume by
        # name next time.
        for r in tracking.child_runs(uri, parent_id):
            if r.info.status == tracking.RUNNING:
                tracking.end_run(uri, r.info.run_id, status)
        raise
    finally:
        tracking.end_run(uri, parent_id, status)


# --- summary -----------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("depth", "shortcut", "seed", "status", "train_error", "val_error", "test_error", "params",
                   "mult_adds", "wall_time_s", "images_per_s", "run_id")


def summarize(uri: str, parent_id: str, sweep: SweepConfig, digest: str, trials: list[Trial],
              model_cfg: ModelConfig, num_classes: int, input_size: int) -> dict[str, Any]:
    """The sweep's table, read back from the child runs in MLflow (the source of truth)."""
    from resnet_pipeline import tracking

    runs = {r.info.run_name: r for r in tracking.child_runs(uri, parent_id)}
    rows = []
    for t in trials:
        params, macs = complexity(_model_cfg(model_cfg, t), num_classes, input_size)
        row: dict[str, Any] = {"depth": t.depth, "shortcut": t.shortcut, "seed": t.seed, "params": params,
                               "mult_adds": macs, "status": "MISSING", "run_id": None}
        run = runs.get(t.run_name())
        if run is not None:
            m = tracking.run_metrics(run)
            speeds = [v for _, v in tracking.metric_history(uri, run.info.run_id, "images_per_s")]
            row.update(status=run.info.status, run_id=run.info.run_id,
                       train_error=m.get("train_error"), val_error=m.get("best_val_error"),
                       test_error=m.get("test_error"),
                       wall_time_s=((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
                       images_per_s=statistics.median(speeds) if speeds else None)
        rows.append(row)
    return {"sweep": sweep.name, "config_digest": digest, "family": sweep.family, "trials": rows,
            "aggregate": aggregate(rows)}


def _log_to_parent(uri: str, parent_id: str, summary: dict[str, Any], step: int) -> None:
    """The sweep's headline on its parent run, so that the collapsed runs table and the charts show
    it: the best finished trial by validation error (the test error never selects), its val and test
    error, and how many trials finished; at ``step``, the trials' last iteration, where the charts draw
    the trials' own final values."""
    from resnet_pipeline import tracking

    done = [r for r in summary["trials"] if r["status"] == tracking.FINISHED and r.get("val_error") is not None]
    metrics = {"trials_finished": float(len(done))}
    if done:
        best = min(done, key=lambda r: r["val_error"])
        metrics.update(val_error=best["val_error"], **({"test_error": best["test_error"]}
                                                       if best.get("test_error") is not None else {}))
        tracking.set_tags(uri, parent_id, {"best_trial": trial_name(best["depth"], best["shortcut"], best["seed"])})
    tracking.log_metrics(uri, parent_id, metrics, step)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (depth, shortcut)."""
    out = []
    keys = sorted({(r["depth"], r["shortcut"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for depth, shortcut in keys:
        group = [r for r in rows if r["depth"] == depth and r["shortcut"] == shortcut and r["status"] == "FINISHED"]
        entry: dict[str, Any] = {"depth": depth, "shortcut": shortcut, "seeds": len(group)}
        for metric in ("train_error", "val_error", "test_error"):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = _mean_std([r.get(metric) for r in group])
        out.append(entry)
    return out


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    """summary.json (everything), summary.csv (one row per trial) and metrics.json (mean over seeds
    per net, flat, for `dvc metrics show`), each written atomically."""
    from resnet_pipeline.training.checkpoint import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    flat = {f"{a['shortcut']}-{a['depth']}": {k: v for k, v in a.items() if k.endswith("_mean") or k == "seeds"}
            for a in summary["aggregate"]}
    atomic_write_bytes(out / "metrics.json", json.dumps(flat, indent=2).encode())
    lines = [",".join(SUMMARY_COLUMNS)]
    for r in summary["trials"]:
        lines.append(",".join("" if r.get(c) is None else str(r.get(c)) for c in SUMMARY_COLUMNS))
    atomic_write_bytes(out / "summary.csv", ("\n".join(lines) + "\n").encode())
    return out
