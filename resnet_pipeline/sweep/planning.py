"""Before Ray starts: the trials, the digest of what shapes their results, and (--dry-run) their compute."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from resnet_pipeline.data import dataset_fingerprint, load_manifest
from resnet_pipeline.data.config import DataConfig, DataError
from resnet_pipeline.data.loader import eval_geometry, loader_spec
from resnet_pipeline.models import ModelConfig, build_model, count_params, resnet_cifar, resnet_mult_adds
from resnet_pipeline.sweep.config import SweepConfig, Trial, trial_model
from resnet_pipeline.training.config import TrainConfig

# Settings that do not change what a trial computes: bookkeeping, fault tolerance, naming.
# (log_every shapes results: the ResNet-110 warm-up ends at the first logging window under its error.)
_NOT_RESULT_SHAPING = {"run_name", "experiment", "storage_path", "max_failures", "inject_failure_at", "inject_failure",
                       "keep_checkpoints", "checkpoint_every"}


def config_digest(train: TrainConfig, model_cfg: ModelConfig, data: dict[str, Any]) -> str:
    """6 hex digits identifying the settings that shape a sweep's results."""
    # Each trial sets its own depth, shortcut and family: the model section's values for them do not count.
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("depth", "shortcut", "family")}
    shaping = {"train": {k: v for k, v in dataclasses.asdict(train).items() if k not in _NOT_RESULT_SHAPING},
               "model": model, "data": data}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:6]


def shaping_data(data_path: Path, backend: str, normalize: str, aug: dict[str, Any] | None,
                 kind: str) -> dict[str, Any]:
    """The data settings that `config_digest` counts."""
    # The data's content, not its folder: prepared again with another split, the trials train again;
    # moved elsewhere, they do not.
    shaping = {"dataset": dataset_fingerprint(data_path), "backend": backend, "normalize": normalize}
    if aug and kind == "imagenet":  # the crops only shape ImageNet-kind runs
        shaping["aug"] = dict(aug)
    return shaping


def plan(sweep: SweepConfig, train: TrainConfig) -> list[Trial]:
    sweep.validate()
    sweep.in_trial(train.workers)  # raises when the launcher cannot run train.workers
    return [Trial(d, s, train.seed + i, sweep.family)
            for (d, s), i in itertools.product(sweep.nets(), range(sweep.seeds))]


def complexity(model_cfg: ModelConfig, num_classes: int, input_size: int) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a model, built on the meta device."""
    with torch.device("meta"):
        model = build_model(model_cfg, num_classes, input_size)
    return count_params(model), resnet_mult_adds(model, input_size)


def calibrate(input_size: int, batch: int, steps: int = 5) -> float:
    """Measured training multiply-adds per second on this machine (forward + backward ~ 3x forward),
    from a few steps of ResNet-20 at the per-worker batch. Used only for --dry-run estimates."""
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
        params, macs = complexity(trial_model(model_cfg, t), num_classes, input_size)
        compute = macs * 3 * train.iterations * train.batch_size  # multiply-adds, forward + backward
        rows.append({"depth": t.depth, "shortcut": t.shortcut, "seed": t.seed, "params": params, "mult_adds": macs,
                     "train_mult_adds": compute, "estimated_s": compute / rate if rate else None})
    return rows


def data_shape(data_dir: Path, aug: dict[str, Any] | None = None) -> tuple[int, int, str]:
    """(classes, the side of the model's input, cifar|imagenet kind) of a prepared dataset."""
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
    from resnet_pipeline.training.driver import resolve_workers

    train.validate()
    train = resolve_workers(train)
    trials = plan(sweep, train)
    try:  # data_shape raises DataError first thing when the data is not prepared
        num_classes, input_size, _ = data_shape(Path(data_dir), aug)
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
