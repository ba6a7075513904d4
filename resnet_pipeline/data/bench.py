"""Throughput of the data loaders: images/s of each backend with the training augmentation."""

from __future__ import annotations

import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

from resnet_pipeline.data.loader import cuda_available, dali_available, make_loader


def available_backends() -> list[str]:
    """The concrete backends this machine can run, fastest first."""
    found = []
    if dali_available():
        found += (["dali-gpu"] if cuda_available() else []) + ["dali-cpu"]
    return found + ["torch"]


def bench_data(data_dir: str | Path, *, backends: list[str] | None = None, split: str = "train",
               batch_size: int = 256, num_threads: int = 2, normalize: str = "per_pixel",
               warmup_batches: int = 10, seconds: float = 5.0, rounds: int = 3) -> dict:
    """Time each backend on ``split`` with the training augmentation; report the median of rounds.

    Every backend gets the same ``num_threads`` (DALI threads or torch workers). The backends take
    turns, ``rounds`` times, so a change in the machine's load hits all of them alike. Each turn
    first drains ``warmup_batches`` (start-up, and what a loader prefetched while idle), then
    counts images for at least ``seconds``, across epochs if need be; GPU work is synchronised
    before the clock stops.
    Returns {"results": [{backend, images_per_s (median), rounds_images_per_s, ...}], "machine": {...}}.
    """
    import torch

    loaders = {}
    for backend in backends or available_backends():
        loader = make_loader(data_dir, split, train=True, batch_size=batch_size, backend=backend,
                             num_threads=num_threads, normalize=normalize)
        loaders[loader.backend] = (loader, _batches(loader))
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, (_, batches) in loaders.items():
            for _ in range(warmup_batches):
                next(batches)
            images, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                x, _ = next(batches)
                images += x.shape[0]
            if x.is_cuda:
                torch.cuda.synchronize()
            rates[name].append(images / (time.perf_counter() - start))
    for _, batches in loaders.values():
        batches.close()
    results = [{"backend": name, "images_per_s": statistics.median(r), "rounds_images_per_s": r,
                "batch_size": batch_size, "num_threads": num_threads} for name, r in rates.items()]
    return {"results": results, "data_dir": str(data_dir), "split": split, "normalize": normalize,
            "seconds_per_round": seconds, "rounds": rounds, "machine": _machine()}


def _batches(loader):
    """Endless batches, epoch after epoch."""
    while True:
        yield from loader


def _machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "torchvision", "nvidia-dali-cuda130", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if cuda_available() else None,
            "python": platform.python_version(), **versions}
