"""The training loop: plain, importable functions that run with or without Ray.

`train_step` and `evaluate` are the building blocks; `fit` runs the paper's iteration-based
schedule with logging windows, validation, checkpoints and resume. Under Ray Train, `fit` runs on
every worker with its rank and world size (the process group is already initialised); without Ray
it runs in one process (e.g. on a GPU machine that has torch but nothing else).

Imports only torch, torchvision (through the models) and our data loaders.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from resnet_pipeline.models import ModelConfig, ResNet, build_model
from resnet_pipeline.training.checkpoint import CheckpointManager, join
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.schedule import PaperSchedule

Report = Callable[[dict[str, float], int], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class InjectedFailure(RuntimeError):
    """Raised once by `train.inject_failure_at` to test recovery."""


def resolve_device(use_gpu: str = "auto") -> torch.device:
    if use_gpu == "on" and not torch.cuda.is_available():
        raise ValueError("train.use_gpu: 'on' needs a CUDA GPU and none is visible; use 'auto' or 'off'")
    if use_gpu != "off" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. auto: bf16 on GPUs that support it (else fp16), bf16 on
    CPUs with native bf16 (AMX/AVX512-BF16), fp32 otherwise."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
               skip_nonfinite: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One SGD step. Returns (loss, number of wrong top-1 predictions) as device tensors: no host sync.

    With ``skip_nonfinite`` a NaN/inf loss is detected before the backward pass (one host sync per
    step) and the step is skipped: the wrong count is then None and the weights are unchanged. When
    distributed, every rank skips if any rank's loss is not finite (one all-reduce): a rank skipping
    the backward pass alone would leave the others waiting in DDP's gradient all-reduce.
    """
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(images)  # (B, classes)
        loss = F.cross_entropy(logits, labels)
    if skip_nonfinite:
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite:
            return loss.detach(), None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.detach().argmax(1) != labels).sum()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 error over ``loader`` (summed across ranks when distributed).

    A [N, K, 3, H, W] batch (e.g. ten-crop) is scored by averaging the K views' softmax outputs.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 wrong, top-5 wrong, count
    try:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            views = images.shape[1] if images.dim() == 5 else 1
            flat = images.flatten(0, 1) if views > 1 else images
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(flat.contiguous(memory_format=torch.channels_last)).float()
            probs = logits.softmax(1).view(labels.shape[0], views, -1).mean(1)  # (B, classes)
            sums[0] += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
            top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
            sums[1] += (top5[:, 0] != labels).sum()
            sums[2] += (~(top5 == labels[:, None]).any(1)).sum()
            sums[3] += labels.shape[0]
    finally:
        model.train(was_training)
    loss, wrong1, wrong5, n = _all_reduce_sum(sums.tolist(), device)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": loss / n, "top1_error": wrong1 / n, "top5_error": wrong5 / n, "count": n}


@dataclass
class DataSource:
    """Where the prepared data is and how to load it (from the `data` section)."""

    data_dir: str
    backend: str = "auto"
    normalize: str = "per_pixel"
    num_threads: int = 1
    # ImageNet-kind geometry (`make_loader`'s crop_size, resize_range, eval_resize, color_aug);
    # empty: the loader's defaults (Sec. 3.4's 224 crops).
    aug: dict[str, Any] = field(default_factory=dict)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's loader gets its own seed, so that resuming mid-run replays the same stream."""
    return (seed * 1_000_003 + epoch) % 2**31


def make_train_loader(src: DataSource, batch: int, rank: int, world: int, seed: int, epoch: int):
    from resnet_pipeline.data import make_loader

    return make_loader(src.data_dir, "train", train=True, batch_size=batch, backend=src.backend, shard_id=rank,
                       num_shards=world, seed=epoch_seed(seed, epoch), num_threads=src.num_threads,
                       normalize=src.normalize, **src.aug)


def make_eval_loader(src: DataSource, split: str, batch: int, rank: int, world: int):
    from resnet_pipeline.data import make_loader
    from resnet_pipeline.data.loader import eval_geometry

    return make_loader(src.data_dir, split, train=False, batch_size=batch, backend=src.backend, shard_id=rank,
                       num_shards=world, num_threads=src.num_threads, normalize=src.normalize,
                       **eval_geometry(src.aug))


def unwrap(model: nn.Module) -> ResNet:
    """The ResNet inside torch.compile's and DDP's wrappers (whose state_dict keys carry prefixes)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore


@dataclass
class FitResult:
    iteration: int
    metrics: dict[str, float]
    model: ResNet
    checkpoint_dir: str | Path  # a folder, or a URI


def fit(cfg: TrainConfig, model_cfg: ModelConfig, src: DataSource, run_dir: str | Path, *, rank: int = 0,
        world_size: int = 1, device: torch.device | None = None, report: Report | None = None,
        config_snapshot: dict[str, Any] | None = None) -> FitResult:
    """Train to ``cfg.iterations``, resuming from the newest checkpoint in ``run_dir/checkpoints``
    (``run_dir``: a folder, or an object-store URI such as ``s3://bucket/prefix/run``).

    ``report(metrics, iteration)`` is called on every rank at each logging window and evaluation,
    with the same (all-reduced) metrics, the same number of times on every rank.
    """
    device = device or resolve_device(cfg.use_gpu)
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    if cfg.deterministic:
        # cuBLAS (the fc layer on a GPU) is deterministic only with a fixed workspace, which it reads
        # from the environment when the process first uses it; without one, use_deterministic_algorithms
        # makes the first step raise. (No effect on the CPU.)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)  # the same on every rank: identical initial weights
    amp_dtype = resolve_precision(cfg.precision, device)
    report = report or (lambda metrics, step: None)
    per_worker = cfg.per_worker_batch

    from resnet_pipeline.data import load_manifest

    has_test = "test" in load_manifest(src.data_dir)["splits"]
    val_loader = make_eval_loader(src, "val", per_worker, rank, world_size)
    probe = make_train_loader(src, per_worker, rank, world_size, cfg.seed, 0)
    if len(probe) == 0:
        raise ValueError(f"train.batch_size {cfg.batch_size} is larger than the training split "
                         f"({probe.num_samples} images over {world_size} workers)")
    epoch_len = len(probe)  # batches per epoch per rank, the same every epoch
    input_size = probe.spec.input_size
    model = build_model(model_cfg, num_classes=probe.num_classes, input_size=input_size)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.peak_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = PaperSchedule(optimizer, cfg.peak_lr, cfg.milestones, cfg.lr_decay,
                             warmup=cfg.warmup_enabled(model_cfg.depth, model_cfg.resolved_family()),
                             warmup_lr=cfg.warmup_lr,
                             warmup_until_error=cfg.warmup_until_error,
                             warmup_max_iterations=cfg.warmup_max_iterations,
                             plateau_patience=cfg.plateau_patience, plateau_threshold=cfg.plateau_threshold)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ckpts = CheckpointManager(join(run_dir, "checkpoints"), cfg.keep_checkpoints)

    iteration, epoch, batch_in_epoch, nonfinite_skipped = 0, 0, 0, 0
    metrics: dict[str, float] = {}  # the last training window's, which the final metrics report
    window_sums = [0.0, 0.0, 0.0]  # the training window's totals over all ranks at the checkpoint
    state = ckpts.load_latest(map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        iteration, epoch, batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        nonfinite_skipped = state.get("nonfinite_skipped", 0)
        # A run restarted after its last checkpoint (in the test pass, or logging the model) trains
        # no further, and still reports the last window's training error.
        metrics = state.get("metrics", {})
        # A checkpoint within a logging window (checkpoint_every or eval_every not a multiple of
        # log_every) holds the window's totals so far: the window's training error, which also ends
        # the warm-up, then counts all its iterations, as without the restart.
        window_sums = state.get("window", window_sums)
        rngs = state["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])

    if world_size > 1:
        if cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    model.train()

    def checkpoint(val_error: float | None) -> None:
        rngs: list[Any] = [rng_state()]
        sums = window.tolist()
        if world_size > 1:
            rngs = [None] * world_size
            dist.all_gather_object(rngs, rng_state())
            sums = _all_reduce_sum(sums, device)
        # A checkpoint at the end of an epoch resumes at the start of the next, not by replaying it.
        ep, pos = (epoch + 1, 0) if batch_in_epoch >= epoch_len else (epoch, batch_in_epoch)
        if rank == 0:
            ckpts.save({
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
                "epoch": ep, "batch_in_epoch": pos, "rng": rngs,
                "nonfinite_skipped": nonfinite_skipped, "metrics": metrics, "window": sums,
                "config": config_snapshot or {
                    "train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)},
            }, iteration, val_error)
        if world_size > 1:
            dist.barrier()  # nobody runs ahead of a checkpoint that may be needed to restart

    # Loss sum, wrong, count of this rank's window (rank 0 starts from the totals at the checkpoint).
    window = torch.tensor(window_sums if rank == 0 else [0.0, 0.0, 0.0], dtype=torch.float64, device=device)
    first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=device)  # iteration, loss value
    window_start, window_iters = time.perf_counter(), 0

    while iteration < cfg.iterations:
        loader = probe if epoch == 0 and probe is not None else make_train_loader(
            src, per_worker, rank, world_size, cfg.seed, epoch)
        probe = None
        for b, (images, labels) in enumerate(loader):
            if b < batch_in_epoch:
                continue  # replaying the epoch's stream up to the checkpointed position
            images = images.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            lr = schedule.step(iteration)
            if cfg.inject_failure_at == iteration and rank == 0 and ckpts.mark_once(".failure_injected"):
                if cfg.inject_failure == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise InjectedFailure(f"injected failure at iteration {iteration} (train.inject_failure_at)")
            loss, wrong = train_step(model, images, labels, optimizer, scaler, amp_dtype,
                                     skip_nonfinite=cfg.nonfinite == "skip")
            if wrong is None:
                nonfinite_skipped += 1
            else:
                # Remember the first non-finite loss without a host sync; it is checked per window.
                bad_now = (~torch.isfinite(loss)) & (first_bad[0] < 0)
                first_bad.copy_(torch.where(bad_now, torch.stack([loss.new_tensor(float(iteration)).double(),
                                                                  loss.double()]), first_bad))
                window += torch.stack([loss.double() * labels.shape[0], wrong.double(),
                                       loss.new_tensor(float(labels.shape[0])).double()])
            iteration += 1
            batch_in_epoch = b + 1
            window_iters += 1

            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                loss_sum, wrong_sum, count, bad_it, bad_val = _all_reduce_sum(
                    window.tolist() + first_bad.tolist(), device) if world_size > 1 else \
                    window.tolist() + first_bad.tolist()
                if cfg.nonfinite == "fail" and (bad_it >= 0 or not math.isfinite(loss_sum)):
                    it_local, val_local = first_bad.tolist()
                    raise NonFiniteLossError(
                        f"non-finite training loss {val_local if it_local >= 0 else loss_sum} at iteration "
                        f"{int(it_local) if it_local >= 0 else iteration}; set train.nonfinite: skip to skip such steps")
                elapsed = time.perf_counter() - window_start
                train_error = wrong_sum / max(count, 1)
                schedule.observe_train_error(train_error)
                metrics = {"train_loss": loss_sum / max(count, 1), "train_error": train_error, "lr": lr,
                           "images_per_s": window_iters * cfg.batch_size / max(elapsed, 1e-9), "epoch": epoch,
                           "nonfinite_skipped": nonfinite_skipped}
                report(metrics, iteration)
                window.zero_()
                window_start, window_iters = time.perf_counter(), 0

            evaluating = iteration % cfg.eval_every == 0 or iteration == cfg.iterations
            val_error = None
            if evaluating:
                val = evaluate(model, val_loader, device, amp_dtype)
                val_error = val["top1_error"]
                schedule.observe_val_error(val_error)
                report({"val_loss": val["loss"], "val_error": val["top1_error"],
                        "val_top5_error": val["top5_error"]}, iteration)
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if evaluating or iteration % cfg.checkpoint_every == 0:
                checkpoint(val_error)
                window_start = time.perf_counter()
            if iteration >= cfg.iterations:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break

    final = dict(metrics)
    if has_test:  # reported once, at the end: the test set never selects anything
        test = evaluate(model, make_eval_loader(src, "test", per_worker, rank, world_size), device, amp_dtype)
        final.update({"test_loss": test["loss"], "test_error": test["top1_error"],
                      "test_top5_error": test["top5_error"]})
        report({k: final[k] for k in ("test_loss", "test_error", "test_top5_error")}, iteration)
    best = ckpts.best_error()
    if best is not None:
        final["best_val_error"] = best
    return FitResult(iteration, final, unwrap(model), ckpts.directory)
