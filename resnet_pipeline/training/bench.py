"""`python cli.py bench train`: the Ray Train path against the bare single-process loop.

Same model, batch, precision, data loader and cores, side by side in one run (these machines are
shared and noisy, so only ratios measured together mean much). Throughput is the median of the
per-window images/s after the first window (which includes warm-up); start-up is reported apart.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from resnet_pipeline.models import ModelConfig
from resnet_pipeline.training.config import TrainConfig


def _steady(speeds: list[float]) -> float:
    return statistics.median(speeds[1:] if len(speeds) > 2 else speeds)


def bench_train(data_dir: str | Path, *, depth: int = 20, batch_size: int = 128, iterations: int = 60,
                log_every: int = 10, precision: str = "fp32", channels_last: bool = True,
                modes: tuple[str, ...] = ("bare", "ray-1", "ray-2"), backend: str = "dali-cpu") -> dict[str, Any]:
    from resnet_pipeline.training.driver import check_data_dir, train
    from resnet_pipeline.training.loop import DataSource, fit

    data = check_data_dir(data_dir)
    cores = os.cpu_count() or 1
    base = TrainConfig(iterations=iterations, batch_size=batch_size, log_every=log_every, eval_every=iterations,
                       checkpoint_every=iterations, milestones=[iterations * 10], precision=precision,
                       channels_last=channels_last, experiment="bench-train")
    model_cfg = ModelConfig(depth=depth)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for mode in modes:
            start = time.perf_counter()
            if mode == "bare":
                speeds: list[float] = []
                cfg = dataclasses.replace(base, workers=1, threads_per_worker=cores)
                fit(cfg, model_cfg, DataSource(str(data), backend, num_threads=1), Path(tmp) / mode,
                    report=lambda m, step: speeds.append(m["images_per_s"]) if "images_per_s" in m else None)
            else:
                from resnet_pipeline import tracking

                workers = int(mode.split("-")[1])
                cfg = dataclasses.replace(base, workers=workers, run_name=mode, storage_path=str(Path(tmp) / "results"))
                summary = train(cfg, model_cfg, data, backend=backend, num_threads=workers,
                                tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
                speeds = [v for _, v in tracking.metric_history(summary["tracking_uri"], summary["run_id"],
                                                               "images_per_s")]
            wall = time.perf_counter() - start
            ips = _steady(speeds)
            results.append({"mode": mode, "images_per_s": ips, "wall_s": wall,
                            "train_s": iterations * batch_size / ips, "overhead_s": wall - iterations * batch_size / ips})
    bare = next((r["images_per_s"] for r in results if r["mode"] == "bare"), None)
    for r in results:
        r["vs_bare"] = r["images_per_s"] / bare if bare else None
    from resnet_pipeline.data.bench import machine_info

    return {"depth": depth, "batch_size": batch_size, "iterations": iterations, "precision": precision,
            "channels_last": channels_last, "backend": backend, "data_dir": str(data), "machine": machine_info(),
            "results": results}
