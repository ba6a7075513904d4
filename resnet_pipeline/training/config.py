"""The `train` section of params.yaml: the paper's CIFAR-10 recipe (Section 4.2) by default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from resnet_pipeline.config import Bounds, ConfigError, check_fields, check_name

Positive = Annotated[int, Bounds(gt=0)]
Rate = Annotated[float, Bounds(gt=0, finite=True)]
Fraction = Annotated[float, Bounds(ge=0, lt=1, finite=True)]


@dataclass
class TrainConfig:
    # Schedule (Section 4.2): lr 0.1, /10 at 32k and 48k iterations, stop at 64k; batch 128.
    iterations: Positive = 64_000
    batch_size: Positive = 128  # global: split evenly across workers
    lr: Rate = 0.1
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Bounds(ge=0, finite=True)] = 1e-4
    milestones: list[int] = field(default_factory=lambda: [32_000, 48_000])
    lr_decay: Annotated[float, Bounds(gt=0, le=1, finite=True)] = 0.1
    # ImageNet (Sec. 3.4): "divided by 10 when the error plateaus". When > 0, the lr is also
    # multiplied by lr_decay after this many validations in a row without a new best validation
    # error (by at least plateau_threshold); 0: fixed milestones only.
    plateau_patience: Annotated[int, Bounds(ge=0, note="0: off")] = 0
    plateau_threshold: Fraction = 0.001
    # Linear scaling (arXiv 1706.02677): lr x batch_size / base_batch_size.
    lr_scaling: Literal["none", "linear"] = "none"
    base_batch_size: Positive = 128
    # Warm-up (Section 4.2, ResNet-110): lr 0.01 until training error < 80%, then back to lr.
    # auto: on for CIFAR nets of depth >= 110, as the paper; the cap keeps a net that never gets there from
    # staying at the small lr (the paper: "about 400 iterations").
    warmup: Literal["auto", "on", "off"] = "auto"
    warmup_lr: Rate = 0.01
    warmup_until_error: Annotated[float, Bounds(gt=0, le=1, what="a training error")] = 0.8
    warmup_max_iterations: Annotated[int, Bounds(gt=0, note="warmup: off turns the warm-up off")] = 400

    # Distribution and speed.
    # Data-parallel processes. auto: one per GPU (this machine's, or the Ray cluster's), else 2 on the
    # CPU (at most the cores); see `resolved`.
    workers: Positive | Literal["auto"] = "auto"
    use_gpu: Literal["auto", "on", "off"] = "auto"
    sync_bn: bool = False  # the paper's multi-GPU training uses per-GPU batch statistics
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where supported
    channels_last: bool = True
    compile: bool = False
    threads_per_worker: Annotated[int, Bounds(ge=0, note="0: the cores / workers")] = 0  # torch threads per worker
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)

    # Bookkeeping, in iterations.
    log_every: Positive = 100
    eval_every: Positive = 2_000
    checkpoint_every: Positive = 2_000
    keep_checkpoints: Positive = 2  # the last N, plus the best on validation error
    nonfinite: Literal["fail", "skip"] = "fail"
    # Ray Train restarts of the worker group from the last checkpoint.
    max_failures: Annotated[int, Bounds(ge=-1, note="-1: unlimited")] = 2
    # Where checkpoints and Ray results go; relative paths are under the project root.
    # On a multi-node cluster this must be a filesystem every node shares.
    # auto: results/<the prepared data folder's name> (`for_data`).
    storage_path: str = "auto"
    experiment: str = "auto"  # the MLflow experiment; auto: resnet-<the prepared data folder's name>
    run_name: str | None = None
    # Chaos testing: the rank-0 worker raises once at this iteration (see docs/reliability.md).
    inject_failure_at: Annotated[int, Bounds(ge=0, what="an iteration", note="or null")] | None = None
    # How it fails: an exception, or SIGKILL of its own process (as the OOM killer does).
    inject_failure: Literal["raise", "sigkill"] = "raise"

    def for_data(self, data_dir: str | Path) -> "TrainConfig":
        """``auto`` names made from the prepared data folder's name (data/prepared/mine: experiment
        resnet-mine, checkpoints under results/mine), so that runs on other data say so."""
        name = Path(data_dir).resolve().name
        return dataclasses.replace(
            self, experiment=f"resnet-{name}" if self.experiment == "auto" else self.experiment,
            storage_path=str(Path("results") / name) if self.storage_path == "auto" else self.storage_path)

    def validate(self) -> None:
        check_fields(self, "train")
        for key in ("experiment", "storage_path"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"train.{key}: must not be empty "
                                  f"(e.g. {TrainConfig.__dataclass_fields__[key].default!r})")
        ms = list(self.milestones)
        if any(b <= a for a, b in zip(ms, ms[1:])) or any(m <= 0 for m in ms):
            raise ConfigError(f"train.milestones: must be strictly increasing positive iterations, got {ms}")
        if self.workers != "auto" and self.batch_size % self.workers:
            raise ConfigError(f"train.batch_size {self.batch_size} is not divisible by train.workers {self.workers}: "
                              "the global batch is split evenly across workers; use e.g. batch_size "
                              f"{self.batch_size - self.batch_size % self.workers or self.workers} "
                              "or workers dividing it")
        if self.run_name is not None:
            check_name("train.run_name", self.run_name, "resnet20-baseline")

    def resolved(self, gpus: int, cpus: int) -> "TrainConfig":
        """This config with ``workers: auto`` made a number for the GPUs and CPU cores training can use (see
        ``workers``), then the largest count not above that which divides the global batch. An explicit
        number is kept (and checked where it runs)."""
        if self.workers != "auto":
            return self
        want = gpus if gpus > 0 and self.use_gpu != "off" else min(2, max(1, cpus))
        workers = next(n for n in range(max(1, want), 0, -1) if self.batch_size % n == 0)
        return dataclasses.replace(self, workers=workers)

    @property
    def per_worker_batch(self) -> int:
        if self.workers == "auto":
            raise ValueError("train.workers is 'auto': call TrainConfig.resolved() first")
        return self.batch_size // self.workers

    @property
    def peak_lr(self) -> float:
        return self.lr * (self.batch_size / self.base_batch_size if self.lr_scaling == "linear" else 1.0)

    def warmup_enabled(self, depth: int, family: str) -> bool:
        """``auto``: the paper's warm-up is for its CIFAR ResNet-110 (Sec. 4.2), not ImageNet's 101/152."""
        return self.warmup == "on" or (self.warmup == "auto" and family == "cifar" and depth >= 110)
