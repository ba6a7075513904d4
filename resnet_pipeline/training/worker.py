"""What each training process runs: `fit` plus reporting (progress, MLflow from rank 0, Ray)."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import numpy as np

from resnet_pipeline.models import ModelConfig, net_name
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.loop import DataSource, FitResult, fit


class Reporter:
    """Called by `fit` on every rank; rank 0 prints a progress line and logs to MLflow."""

    def __init__(self, rank: int, total: int, tracking_uri: str | None, run_id: str | None,
                 report_to: Callable[[dict[str, float]], None] | None = None) -> None:
        self.rank, self.total = rank, total
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.report_to = report_to  # ray.train.report in a Ray Train worker, ray.tune.report in a Tune trial
        self.first_step: int | None = None  # the first step printed, and its time, for the ETA
        self.latest: dict[str, float] = {}  # every metric's last value, so each Ray report carries all

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.latest.update(metrics)
        if self.rank == 0:
            if self.run_id:
                from resnet_pipeline import tracking

                tracking.log_metrics(self.tracking_uri, self.run_id, metrics, step)
            self.print(metrics, step)
        # Ray (and through it Tune's schedulers, which rank trials on val_error) gets a report once
        # a validation error exists; every rank reaches this point equally often, as Ray requires.
        if self.report_to is not None and "val_error" in self.latest:
            self.report_to({**self.latest, "iteration": step})

    def print(self, m: dict[str, float], step: int) -> None:
        if self.first_step is None:
            self.first_step, self.started = step, time.perf_counter()
        if "train_loss" in m:
            done = step - self.first_step
            eta = (time.perf_counter() - self.started) / done * (self.total - step) if done > 0 else float("nan")
            line = (f"it {step:>6}/{self.total}  loss {m['train_loss']:.3f}  train err {m['train_error']:6.2%}  "
                    f"lr {m['lr']:.4g}  {m['images_per_s']:7.0f} img/s  data wait {m['data_wait_fraction']:4.0%}  "
                    f"ETA {_fmt(eta)}")
        else:
            split = "val" if "val_error" in m else "test"
            line = f"it {step:>6}/{self.total}  {split} err {m[f'{split}_error']:6.2%}"
            if f"{split}_top5_error" in m:
                line += f"  top-5 {m[f'{split}_top5_error']:6.2%}"
        # sys.stdout, not print(): Ray Train patches print() on workers to log it twice.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def run_worker(config: dict[str, Any], rank: int = 0, world_size: int = 1, device=None,
               report_to: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train from a plain dict (what Ray ships to each worker) and, on rank 0, log the final model.
    ``report_to`` receives every metric's latest value (plus ``iteration``) at each logging window
    and evaluation once a validation error exists, on every rank."""
    train_cfg = TrainConfig(**config["train"])
    model_cfg = ModelConfig(**config["model"])
    src = DataSource(**config["data"])
    uri, run_id = config.get("tracking_uri"), config.get("run_id")
    reporter = Reporter(rank, train_cfg.iterations, uri, run_id, report_to)
    result = fit(train_cfg, model_cfg, src, config["run_dir"], rank=rank, world_size=world_size, device=device,
                 report=reporter, config_snapshot=config.get("snapshot"))
    if rank == 0 and run_id:
        from resnet_pipeline import tracking

        model = result.model.float().cpu()
        size = result.input_size
        example = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        tracking.log_model(uri, run_id, model, example, name=net_name(model_cfg.depth, model_cfg.resolved_shortcut()))
        # The rest of the final metrics were logged at the last step already: one metric per quantity.
        if "best_val_error" in result.metrics:
            tracking.log_metrics(uri, run_id, {"best_val_error": result.metrics["best_val_error"]}, result.iteration)
    return result


def worker_config(train_cfg: TrainConfig, model_cfg: ModelConfig, src: DataSource, run_dir: str,
                  tracking_uri: str | None, run_id: str | None, snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"train": dataclasses.asdict(train_cfg), "model": dataclasses.asdict(model_cfg),
            "data": dataclasses.asdict(src), "run_dir": run_dir, "tracking_uri": tracking_uri, "run_id": run_id,
            "snapshot": snapshot}
