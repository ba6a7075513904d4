"""The training loop: plain, importable functions that run with or without Ray.

`train_step`, `train_window` and `evaluate` are the building blocks, usable on their own (as torchvision's
`train_one_epoch` and `evaluate`); `Trainer` and `fit` run the paper's iteration-based schedule with them: logging
windows, validation, checkpoints and resume (`TrainState`). Under Ray Train, `fit` runs on every worker with its rank
and world size (the process group is already initialised); without Ray it runs in one process. Imports only torch,
torchvision (through the models) and our data loaders.
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
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from resnet_pipeline.data import load_manifest, make_loader
from resnet_pipeline.data.loader import eval_geometry
from resnet_pipeline.models import ModelConfig, ResNet, build_model
from resnet_pipeline.storage import join
from resnet_pipeline.training.checkpoint import CheckpointManager
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
    if precision != "auto":
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
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


# Images per forward pass in evaluation: ten-crop batches of 256 are 2,560 views, which ResNet-152
# would hold as activations all at once; chunks bound the memory whatever the batch.
EVAL_CHUNK = 256


def predict_views(model: nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None = None,
                  chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Class probabilities float32 [B, classes] of a [B, 3, H, W] batch, or of a [B, K, 3, H, W] batch of
    K views (e.g. ten-crop) averaged over the views; the forward passes run under ``amp_dtype``'s
    autocast, ``chunk`` images at a time."""
    views = images.shape[1] if images.dim() == 5 else 1
    flat = images.flatten(0, 1) if views > 1 else images  # (B * K, 3, H, W)
    with torch.autocast(flat.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = torch.cat([model(part.contiguous(memory_format=torch.channels_last)).float()
                            for part in flat.split(chunk)])
    return logits.softmax(1).view(images.shape[0], views, -1).mean(1)


def has_top5(num_classes: int) -> bool:
    """Whether top-5 error says anything: with 5 classes or fewer the label is always among the top 5
    (0%), so it is neither reported nor logged."""
    return num_classes > 5


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 error over ``loader`` (summed across ranks when distributed); no
    ``top5_error`` for 5 classes or fewer (`has_top5`). A [N, K, 3, H, W] batch (e.g. ten-crop) is
    scored by averaging the K views' softmax outputs (`predict_views`)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 wrong, top-5 wrong, count
    num_classes = 0
    try:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            probs = predict_views(model, images, amp_dtype)  # (B, classes)
            num_classes = probs.shape[1]
            # -log p of the label, gathered: nll_loss is on CUDA's nondeterministic list (its 2-d form).
            sums[0] -= probs.clamp_min(1e-12).log().gather(1, labels[:, None]).sum()
            top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
            sums[1] += (top5[:, 0] != labels).sum()
            sums[2] += (~(top5 == labels[:, None]).any(1)).sum()
            sums[3] += labels.shape[0]
    finally:
        model.train(was_training)
    loss, wrong1, wrong5, n = _all_reduce_sum(sums.tolist(), device)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    out = {"loss": loss / n, "top1_error": wrong1 / n, "count": n}
    return {**out, "top5_error": wrong5 / n} if has_top5(num_classes) else out


def split_metrics(split: str, result: dict[str, float]) -> dict[str, float]:
    """`evaluate`'s result as ``<split>_loss``, ``<split>_error`` and (when there) ``<split>_top5_error``."""
    return {f"{split}_loss": result["loss"], f"{split}_error": result["top1_error"],
            **({f"{split}_top5_error": result["top5_error"]} if "top5_error" in result else {})}


@dataclass
class DataSource:
    """Where the prepared data is and how to load it (from the `data` section)."""

    data_dir: str
    backend: str = "auto"
    normalize: str = "auto"
    num_threads: int = 1
    # ImageNet-kind geometry (`make_loader`'s crop_size, resize_range, eval_resize, color_aug);
    # empty: the loader's defaults (Sec. 3.4's 224 crops).
    aug: dict[str, Any] = field(default_factory=dict)


def make_eval_loader(src: DataSource, split: str, batch: int, rank: int, world: int):
    return make_loader(src.data_dir, split, train=False, batch_size=batch, backend=src.backend, shard_id=rank,
                       num_shards=world, num_threads=src.num_threads, normalize=src.normalize, **eval_geometry(src.aug))


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
    input_size: int  # of the evaluation loader: what the model is exported with


class Window:
    """One logging window's training totals, kept on the device so that a step never waits for the
    host: the loss sum and wrong count grow by device ops, the first non-finite loss is remembered with
    `torch.where`, and the host reads them once, at the window's end (`sums`)."""

    def __init__(self, device: torch.device, sums: list[float] | None = None) -> None:
        self.loss_sum, self.wrong = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(2))
        self.step = torch.zeros((), dtype=torch.float64, device=device)  # the iteration, counted on the device
        self.bad = torch.full((2,), -1.0, dtype=torch.float64, device=device)  # first non-finite: iteration, loss
        self.restart(sums)

    def record(self, loss: torch.Tensor, wrong: torch.Tensor | None, samples: int) -> None:
        """Count one step; a skipped one (``wrong`` None, `train_step`) adds nothing to the totals."""
        if wrong is not None:
            bad_now = (~torch.isfinite(loss)) & (self.bad[0] < 0)
            self.bad.copy_(torch.where(bad_now, torch.stack([self.step, loss.double()]), self.bad))
            self.loss_sum.add_(loss.double(), alpha=samples)
            self.wrong.add_(wrong)
            self.count += samples
        self.step.add_(1)
        self.iterations += 1

    def sums(self) -> list[float]:
        """[loss sum, wrong, count] (one host sync)."""
        return [*torch.stack([self.loss_sum, self.wrong]).tolist(), float(self.count)]

    def restart(self, sums: list[float] | None = None) -> None:
        """Zero the totals (at a logging window's end), or set them to ``sums`` (a restored window's); the
        device iteration counter goes on."""
        loss_sum, wrong, self.count = sums or (0.0, 0.0, 0)  # count: samples, a host number (known without the device)
        self.loss_sum.fill_(loss_sum)
        self.wrong.fill_(wrong)
        self.iterations, self.data_wait_s = 0, 0.0
        self.started = time.perf_counter()


def train_window(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 schedule: PaperSchedule, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], window: Window,
                 start: int, stop: int, device: torch.device, *, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False, skip_nonfinite: bool = False) -> int:
    """Train iterations ``start`` to ``stop`` - 1 on the next batches of ``batches``, adding each step to ``window``;
    returns the number of steps skipped for a non-finite loss (``skip_nonfinite``). No host sync: the step's numbers
    stay on the device (`Window`); the only host work is the schedule's lr and the time spent waiting for data."""
    skipped = 0
    for iteration in range(start, stop):
        waited = time.perf_counter()
        images, labels = next(batches)
        window.data_wait_s += time.perf_counter() - waited
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        schedule.step(iteration)
        loss, wrong = train_step(model, images, labels, optimizer, scaler, amp_dtype, skip_nonfinite=skip_nonfinite)
        skipped += wrong is None
        window.record(loss, wrong, labels.shape[0])
    return skipped


@dataclass
class TrainState:
    """Where a run stands, besides the model, optimizer, schedule and scaler: what a checkpoint keeps of
    the loop. ``iteration``, ``nonfinite_skipped`` and ``metrics`` are kept current as the run goes; the
    rest live in the loader, the RNGs and the open `Window` while training, and `Trainer.snapshot`
    copies them in for a checkpoint (`Trainer.restore` copies them back out)."""

    iteration: int = 0
    nonfinite_skipped: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the last logging window's
    epoch: int = 0  # the training loader's
    position: int = 0  # batches of that epoch already trained on
    loader: list[Any] = field(default_factory=list)  # every rank's loader state (epoch, batch, DALI state)
    rng: list[Any] = field(default_factory=list)  # every rank's RNG states
    window: list[float] | None = None  # the open window's [loss sum, wrong, count], summed over ranks

    def to_checkpoint(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "epoch": self.epoch, "batch_in_epoch": self.position,
                "loader": self.loader, "rng": self.rng, "nonfinite_skipped": self.nonfinite_skipped,
                "metrics": self.metrics, "window": self.window}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainState:
        return cls(iteration=state["iteration"], nonfinite_skipped=state.get("nonfinite_skipped", 0),
                   metrics=state.get("metrics", {}), epoch=state.get("epoch", 0),
                   position=state.get("batch_in_epoch", 0), loader=state.get("loader") or [], rng=state["rng"],
                   window=state.get("window"))


class Trainer:
    """The paper's iteration-based schedule for one rank, in named steps: `train_until` trains (the hot
    loop, `train_window`, with no host sync), `end_window` logs a window, `validate` and `checkpoint`
    run between windows, `restore` resumes from the newest checkpoint, `test` scores the test split
    once, and `run` strings them together. ``state`` (`TrainState`) is where the run stands."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, src: DataSource, run_dir: str | Path, *,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 report: Report | None = None, config_snapshot: dict[str, Any] | None = None) -> None:
        self.cfg, self.model_cfg, self.rank, self.world_size = cfg, model_cfg, rank, world_size
        self.device = device = device or resolve_device(cfg.use_gpu)
        self.report = report or (lambda metrics, step: None)
        self.config_snapshot = config_snapshot
        configure_torch(cfg, device, world_size)
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights
        self.amp_dtype = resolve_precision(cfg.precision, device)
        self.has_test = "test" in load_manifest(src.data_dir)["splits"]
        self.src, per_worker = src, cfg.per_worker_batch
        self.val_loader = make_eval_loader(src, "val", per_worker, rank, world_size)
        # built once: it reshuffles every epoch (see `Loader`)
        self.loader = make_loader(src.data_dir, "train", train=True, batch_size=per_worker, backend=src.backend,
                                  shard_id=rank, num_shards=world_size, seed=cfg.seed, num_threads=src.num_threads,
                                  normalize=src.normalize, **src.aug)
        if len(self.loader) == 0:
            raise ValueError(f"train.batch_size {cfg.batch_size} is larger than the training split "
                             f"({self.loader.num_samples} images over {world_size} workers)")
        model = build_model(model_cfg, num_classes=self.loader.num_classes, input_size=self.loader.spec.input_size)
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=layout)
        # fused on CUDA: one kernel for the update, and GradScaler (fp16) then checks for inf/NaN
        # gradients on the device instead of reading them back every step.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.peak_lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
        self.schedule = PaperSchedule(
            self.optimizer, cfg.peak_lr, cfg.milestones, cfg.lr_decay,
            warmup=cfg.warmup_enabled(model_cfg.depth, model_cfg.resolved_family()), warmup_lr=cfg.warmup_lr,
            warmup_until_error=cfg.warmup_until_error, warmup_max_iterations=cfg.warmup_max_iterations,
            plateau_patience=cfg.plateau_patience, plateau_threshold=cfg.plateau_threshold)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ckpts = CheckpointManager(join(run_dir, "checkpoints"), cfg.keep_checkpoints)
        self.state = TrainState()
        self.window = Window(device)
        self._batches = self.batches()

    def restore(self) -> bool:
        """Resume from the newest checkpoint, if any. It is read onto the CPU: the RNG states must stay
        CPU tensors (torch.set_rng_state takes nothing else); the weights and the optimizer state are
        copied to the model's device by load_state_dict."""
        saved = self.ckpts.load_latest(map_location="cpu")
        if saved is None:
            return False
        for part in ("model", "optimizer", "schedule", "scaler"):
            getattr(self, part).load_state_dict(saved[part])
        # A run restarted after its last checkpoint (in the test pass, or logging the model) trains
        # no further, and still reports the last window's training error (``state.metrics``).
        self.state = state = TrainState.from_checkpoint(saved)
        # A checkpoint within a logging window holds the window's totals so far (on rank 0): the
        # window's training error then counts all its iterations, as without the restart.
        self.window = Window(self.device, state.window if self.rank == 0 else None)
        self.window.step.fill_(state.iteration)
        if len(state.loader) == self.world_size:
            self.loader.load_state_dict(state.loader[self.rank])
        else:
            # Another number of workers shards the data otherwise: the stream cannot continue where
            # it was, so the next epoch starts afresh (a new shuffle, no sample skipped twice).
            self.loader.load_state_dict({"epoch": state.epoch + 1, "position": 0})
        set_rng_state(state.rng[self.rank] if self.rank < len(state.rng) else state.rng[0])
        return True

    def wrap(self) -> None:
        """DDP and torch.compile around the model (after `restore`, which loads the plain ResNet)."""
        if self.world_size > 1:
            if self.cfg.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.model.train()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training stream across epochs (the loader goes on to its next epoch at each end; it
        starts where `restore` put it, as the generator reads the loader only once drawn from)."""
        while True:
            yield from self.loader

    def train_until(self, stop: int) -> None:
        """Train up to iteration ``stop`` (`train_window`)."""
        cfg, state = self.cfg, self.state
        state.nonfinite_skipped += train_window(
            self.model, self.optimizer, self.scaler, self.schedule, self._batches, self.window, state.iteration,
            stop, self.device, amp_dtype=self.amp_dtype, channels_last=cfg.channels_last,
            skip_nonfinite=cfg.nonfinite == "skip")
        state.iteration = max(state.iteration, stop)

    def end_window(self) -> None:
        """Read the window's totals (all-reduced), check them, report them, and start the next window."""
        window, state = self.window, self.state
        local = window.sums() + window.bad.tolist()
        loss_sum, wrong_sum, count, bad_it, _ = _all_reduce_sum(local, self.device) if self.world_size > 1 else local
        if self.cfg.nonfinite == "fail" and (bad_it >= 0 or not math.isfinite(loss_sum)):
            it_local, val_local = local[3:]
            raise NonFiniteLossError(
                f"non-finite training loss {val_local if it_local >= 0 else loss_sum} at iteration "
                f"{int(it_local) if it_local >= 0 else state.iteration}; set train.nonfinite: skip to skip such steps")
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        train_error = wrong_sum / max(count, 1)
        lr = self.optimizer.param_groups[0]["lr"]  # the window's last step's (`PaperSchedule.step`)
        self.schedule.observe_train_error(train_error)
        state.metrics = {
            "train_loss": loss_sum / max(count, 1), "train_error": train_error, "lr": lr,
            "images_per_s": window.iterations * self.cfg.batch_size / elapsed, "epoch": self.loader.epoch,
            # Of the window's wall time, the part this rank waited for its next batch: near 0 when the
            # device is the bottleneck, near 1 when the loader is.
            "data_wait_fraction": min(1.0, window.data_wait_s / elapsed),
            "nonfinite_skipped": state.nonfinite_skipped}
        self.report(state.metrics, state.iteration)
        window.restart()

    def validate(self) -> float:
        val = evaluate(self.model, self.val_loader, self.device, self.amp_dtype)
        self.schedule.observe_val_error(val["top1_error"])
        self.report(split_metrics("val", val), self.state.iteration)
        return val["top1_error"]

    def snapshot(self) -> TrainState:
        """``state`` with every rank's loader and RNG states and the open window's totals (summed over
        ranks): collective when distributed, so every rank calls it."""
        rngs: list[Any] = [rng_state()]
        loaders: list[Any] = [self.loader.state_dict()]
        sums = self.window.sums()
        if self.world_size > 1:
            rngs, loaders = [None] * self.world_size, [None] * self.world_size
            dist.all_gather_object(rngs, rng_state())
            dist.all_gather_object(loaders, self.loader.state_dict())
            sums = _all_reduce_sum(sums, self.device)
        return dataclasses.replace(self.state, epoch=self.loader.epoch, position=self.loader.position,
                                   loader=loaders, rng=rngs, window=sums)

    def checkpoint(self, val_error: float | None) -> None:
        state = self.snapshot()
        if self.rank == 0:
            self.ckpts.save({
                "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                **state.to_checkpoint(),
                "config": self.config_snapshot or {"train": dataclasses.asdict(self.cfg),
                                                   "model": dataclasses.asdict(self.model_cfg)},
            }, state.iteration, val_error)
        if self.world_size > 1:
            dist.barrier()  # nobody runs ahead of a checkpoint that may be needed to restart

    def test(self) -> dict[str, float]:
        """The test split, once, at the end: the test set never selects anything."""
        loader = make_eval_loader(self.src, "test", self.cfg.per_worker_batch, self.rank, self.world_size)
        metrics = split_metrics("test", evaluate(self.model, loader, self.device, self.amp_dtype))
        self.report(metrics, self.state.iteration)
        return metrics

    def next_stop(self) -> int:
        """The next iteration at which something other than a step happens (a window ends, validation,
        a checkpoint, the injected failure)."""
        cfg, it = self.cfg, self.state.iteration
        stops = [(it // every + 1) * every for every in (cfg.log_every, cfg.eval_every, cfg.checkpoint_every)]
        if cfg.inject_failure_at is not None and cfg.inject_failure_at > it:
            stops.append(cfg.inject_failure_at)
        return min(cfg.iterations, *stops)

    def fail_if_injected(self) -> None:
        """Chaos testing (`train.inject_failure_at`): rank 0 fails once, as an exception or a SIGKILL, when
        the run reaches that iteration. `next_stop` ends a stretch of steps there and `run` calls this
        between stretches, never inside the step loop; the marker file makes it once per run, across restarts."""
        it = self.state.iteration
        if it == self.cfg.inject_failure_at and self.rank == 0 and self.ckpts.mark_once(".failure_injected"):
            if self.cfg.inject_failure == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFailure(f"injected failure at iteration {it} (train.inject_failure_at)")

    def between_windows(self) -> None:
        """What happens at the iteration where `train_until` stopped: log, validate, checkpoint."""
        cfg, it = self.cfg, self.state.iteration
        last = it == cfg.iterations
        if it % cfg.log_every == 0 or last:
            self.end_window()
        evaluating = it % cfg.eval_every == 0 or last
        if evaluating or it % cfg.checkpoint_every == 0:
            self.checkpoint(self.validate() if evaluating else None)
            # Evaluation and saving are neither training throughput nor data wait.
            self.window.started, self.window.data_wait_s = time.perf_counter(), 0.0

    def run(self) -> FitResult:
        self.restore()
        self.wrap()
        self.window.started = time.perf_counter()
        while self.state.iteration < self.cfg.iterations:
            self.fail_if_injected()
            self.train_until(self.next_stop())
            self.between_windows()
        final = dict(self.state.metrics)
        if self.has_test:
            final.update(self.test())
        best = self.ckpts.best_error()
        if best is not None:
            final["best_val_error"] = best
        return FitResult(self.state.iteration, final, unwrap(self.model), self.ckpts.directory,
                         self.val_loader.spec.input_size)


def configure_torch(cfg: TrainConfig, device: torch.device, world_size: int) -> None:
    """Threads, determinism and cuDNN's algorithm search for this process."""
    torch.set_num_threads(cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world_size))
    if cfg.deterministic:
        # cuBLAS (the fc layer on a GPU) is deterministic only with a fixed workspace, which it reads
        # from the environment when the process first uses it; without one, use_deterministic_algorithms
        # makes the first step raise. (No effect on the CPU.)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    # cuDNN benchmarks its convolution algorithms for each new input shape and keeps the fastest (the
    # shapes are fixed here, so once per run); its choice may differ between runs, so not when
    # deterministic. No effect on the CPU.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic


def fit(cfg: TrainConfig, model_cfg: ModelConfig, src: DataSource, run_dir: str | Path, *, rank: int = 0,
        world_size: int = 1, device: torch.device | None = None, report: Report | None = None,
        config_snapshot: dict[str, Any] | None = None) -> FitResult:
    """Train to ``cfg.iterations``, resuming from the newest checkpoint in ``run_dir/checkpoints``
    (``run_dir``: a folder, or an object-store URI such as ``s3://bucket/prefix/run``).
    ``report(metrics, iteration)`` is called on every rank at each logging window and evaluation,
    with the same (all-reduced) metrics, the same number of times on every rank."""
    return Trainer(cfg, model_cfg, src, run_dir, rank=rank, world_size=world_size, device=device, report=report,
                   config_snapshot=config_snapshot).run()
