"""The `train` section of params.yaml: the paper's CIFAR-10 recipe (Section 4.2) by default."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from resnet_pipeline.config import ConfigError, check_name


@dataclass
class TrainConfig:
    # Schedule (Section 4.2): lr 0.1, /10 at 32k and 48k iterations, stop at 64k; batch 128.
    iterations: int = 64_000
    batch_size: int = 128  # global: split evenly across workers
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [32_000, 48_000])
    lr_decay: float = 0.1
    # ImageNet (Sec. 3.4): "divided by 10 when the error plateaus". When > 0, the lr is also
    # multiplied by lr_decay after this many validations in a row without a new best validation
    # error (by at least plateau_threshold); 0: fixed milestones only.
    plateau_patience: int = 0
    plateau_threshold: float = 0.001
    # Linear scaling (arXiv 1706.02677): lr x batch_size / base_batch_size.
    lr_scaling: Literal["none", "linear"] = "none"
    base_batch_size: int = 128
    # Warm-up (Section 4.2, ResNet-110): lr 0.01 until training error < 80%, then back to lr.
    # auto: on for CIFAR nets of depth >= 110, as the paper; the cap keeps a net that never gets there from
    # staying at the small lr (the paper: "about 400 iterations").
    warmup: Literal["auto", "on", "off"] = "auto"
    warmup_lr: float = 0.01
    warmup_until_error: float = 0.8
    warmup_max_iterations: int = 400

    # Distribution and speed.
    # Data-parallel processes. auto: one per GPU (this machine's, or the Ray cluster's), else 2 on the
    # CPU (at most the cores); see `resolved`.
    workers: int | Literal["auto"] = "auto"
    use_gpu: Literal["auto", "on", "off"] = "auto"
    sync_bn: bool = False  # the paper's multi-GPU training uses per-GPU batch statistics
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where supported
    channels_last: bool = True
    compile: bool = False
    threads_per_worker: int = 0  # torch threads per worker; 0: the cores / workers
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)

    # Bookkeeping, in iterations.
    log_every: int = 100
    eval_every: int = 2_000
    checkpoint_every: int = 2_000
    keep_checkpoints: int = 2  # the last N, plus the best on validation error
    nonfinite: Literal["fail", "skip"] = "fail"
    max_failures: int = 2  # Ray Train restarts of the worker group from the last checkpoint
    # Where checkpoints and Ray results go; relative paths are under the project root.
    # On a multi-node cluster this must be a filesystem every node shares.
    # auto: results/<the prepared data folder's name> (`for_data`).
    storage_path: str = "auto"
    experiment: str = "auto"  # the MLflow experiment; auto: resnet-<the prepared data folder's name>
    run_name: str | None = None
    # Chaos testing: the rank-0 worker raises once at this iteration (see docs/reliability.md).
    inject_failure_at: int | None = None
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
        for key in ("experiment", "storage_path"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"train.{key}: must not be empty (e.g. {TrainConfig.__dataclass_fields__[key].default!r})")
        positive = ("iterations", "batch_size", "base_batch_size", "log_every", "eval_every",
                    "checkpoint_every", "keep_checkpoints") + (("workers",) if self.workers != "auto" else ())
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}: must be a positive integer, got {getattr(self, key)}")
        for key in ("lr", "warmup_lr", "momentum", "weight_decay", "lr_decay", "plateau_threshold"):
            if not math.isfinite(getattr(self, key)):  # inf and nan pass the range checks below
                raise ConfigError(f"train.{key}: must be a finite number, got {getattr(self, key)}")
        for key in ("lr", "warmup_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.{key}: must be a positive number, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train.lr_decay: must be in (0, 1], got {self.lr_decay}")
        ms = list(self.milestones)
        if any(b <= a for a, b in zip(ms, ms[1:])) or any(m <= 0 for m in ms):
            raise ConfigError(f"train.milestones: must be strictly increasing positive iterations, got {ms}")
        if not 0 < self.warmup_until_error <= 1:  # also refuses nan
            raise ConfigError(f"train.warmup_until_error: must be a training error in (0, 1], "
                              f"got {self.warmup_until_error}")
        if self.warmup_max_iterations <= 0:
            raise ConfigError(f"train.warmup_max_iterations: must be a positive integer (warmup: off turns the "
                              f"warm-up off), got {self.warmup_max_iterations}")
        if self.inject_failure_at is not None and self.inject_failure_at < 0:
            raise ConfigError(f"train.inject_failure_at: must be an iteration >= 0, or null, "
                              f"got {self.inject_failure_at}")
        if self.plateau_patience < 0:
            raise ConfigError(f"train.plateau_patience: must be >= 0 (0: off), got {self.plateau_patience}")
        if not 0 <= self.plateau_threshold < 1:
            raise ConfigError(f"train.plateau_threshold: must be in [0, 1), got {self.plateau_threshold}")
        if self.workers != "auto" and self.batch_size % self.workers:
            raise ConfigError(
                f"train.batch_size {self.batch_size} is not divisible by train.workers {self.workers}: the global "
                f"batch is split evenly across workers; use e.g. batch_size "
                f"{self.batch_size - self.batch_size % self.workers or self.workers} or workers dividing it")
        if self.threads_per_worker < 0:
            raise ConfigError(f"train.threads_per_worker: must be >= 0 (0 means cores / workers), "
                              f"got {self.threads_per_worker}")
        if self.max_failures < -1:
            raise ConfigError(f"train.max_failures: must be >= 0, or -1 for unlimited, got {self.max_failures}")
        if self.run_name is not None:
            check_name("train.run_name", self.run_name, "resnet20-baseline")

    def resolved(self, gpus: int, cpus: int) -> "TrainConfig":
        """This config with ``workers: auto`` made a number, given the GPUs and CPU cores that training
        can use: one worker per GPU (unless use_gpu is off), else 2 on the CPU (at most the cores);
        then the largest count not above that which divides the global batch. An explicit number is
        kept (and checked where it runs)."""
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
        scale = self.batch_size / self.base_batch_size if self.lr_scaling == "linear" else 1.0
        return self.lr * scale

    def warmup_enabled(self, depth: int, family: str) -> bool:
        """``auto``: the paper's warm-up is for its CIFAR ResNet-110 (Sec. 4.2), not ImageNet's 101/152."""
        return self.warmup == "on" or (self.warmup == "auto" and family == "cifar" and depth >= 110)
