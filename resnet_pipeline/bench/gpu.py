"""GPU benchmark: throughput and model FLOP utilisation of the project's ResNets, and the paper's CIFAR-10 schedule
(Sec. 4.2, 64k iterations) as the pipeline trains it.

Needs only torch, numpy and Pillow (no Ray, DALI, MLflow, YAML or click), so it runs on a machine that has PyTorch and
nothing else: the nets are `resnet_pipeline.models`, the step is the training loop's `train_step`, and the CIFAR run is
`prepare` + the torch loader + `Trainer`. Every part has a time budget and the JSON summary is rewritten after every
measurement, so a run cut short still leaves its results. From the project folder:

    python -m resnet_pipeline.bench.gpu --cifar ../shared/datasets/cifar10-jpeg.tar.gz --out gpu_bench.json
    python -m resnet_pipeline.bench.gpu --device cpu --smoke --cifar tiny.tar.gz --out smoke.json   # seconds

Parts (in this order, so that the figures that matter most come first):
1. ``eager``: images/s and MFU of each net, bf16 autocast + channels_last, no compilation.
2. ``cifar``: ResNet-20 for the paper's 64k iterations (batch 128, lr 0.1, /10 at 32k and 48k, momentum 0.9, weight
   decay 1e-4, 45k/5k train/validation) through the library: the archive prepared once, the torch loader with the
   paper's augmentation, `Trainer` with torch.compile on a GPU. Reports the wall time, the loader's share of it, and
   the test error (paper, Table 6: 8.75%).
3. ``compiled``: the throughput of part 1 with torch.compile, and with torch.compile + CUDA graphs
   (mode="reduce-overhead").

MFU = images/s x 3 x 2 x multiply-adds per image / peak (forward + backward ~ 3 forwards, 2 FLOPs per multiply-add);
peak 989 TFLOP/s, the H100/H200 SXM dense bf16 figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from resnet_pipeline.data.config import DataConfig
from resnet_pipeline.data.prepare import load_manifest, prepare
from resnet_pipeline.environment import machine_info
from resnet_pipeline.files import write_json_atomic
from resnet_pipeline.models import ModelConfig, resnet_cifar, resnet_imagenet, resnet_mult_adds
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.loop import DataSource, Trainer, configure_torch, train_step

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100/H200 SXM spec sheet, dense (no sparsity)

# name: (family, depth, input side, batch)
NETS = {"resnet20": ("cifar", 20, 32, 128), "resnet56": ("cifar", 56, 32, 128), "resnet110": ("cifar", 110, 32, 128),
        "resnet50": ("imagenet", 50, 224, 256)}
SMOKE_NETS = {"resnet20": ("cifar", 20, 32, 8), "resnet50": ("imagenet", 50, 32, 2)}
MODES = ("eager", "compile", "cudagraphs")


class Summary:
    """The JSON summary, rewritten (atomically) after every measurement."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(name: str, mode: str, nets: dict, device: torch.device, amp_dtype, peak: float | None,
               seconds: float, warmup: int, min_steps: int = 3) -> dict[str, Any]:
    """Images/s and MFU of training steps (the project's `train_step`) of net ``name`` in ``mode``."""
    family, depth, size, batch = nets[name]
    classes = 10 if family == "cifar" else 1000
    model = resnet_cifar(depth, classes) if family == "cifar" else resnet_imagenet(depth, classes)
    macs = resnet_mult_adds(model, size)
    model.to(device, memory_format=torch.channels_last)
    # The paper's SGD (Sec. 4.2); fused on a GPU: one kernel for the whole update.
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                          **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    compile_mode = "reduce-overhead" if mode == "cudagraphs" else None
    net = model if mode == "eager" else torch.compile(model, mode=compile_mode)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if mode == "cudagraphs" else None

    def step(x, y):
        if mark is not None:  # CUDA graphs: each training step's start is marked
            mark()
        return train_step(net, x, y, opt, scaler, amp_dtype)

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device, generator=gen)
    start = time.perf_counter()
    for _ in range(warmup):  # compilation, CUDA graph capture, cuDNN autotuning
        step(x, y)
    sync(device)
    warm_s = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        for _ in range(10 if device.type == "cuda" else 1):
            step(x, y)
            steps += 1
        sync(device)
    elapsed = time.perf_counter() - start
    ips = steps * batch / elapsed
    flops = ips * 3 * 2 * macs
    return {"net": name, "mode": mode, "batch": batch, "input_size": size, "mult_adds": macs,
            "images_per_s": ips, "step_ms": 1000 * elapsed / steps, "tflops": flops / 1e12,
            "mfu": flops / (peak * 1e12) if peak else None, "warmup_s": warm_s, "steps": steps}


# --- CIFAR-10 through the library ----------------------------------------------------------------

class OutOfTime(Exception):
    """Raised from the trainer's report hook once the CIFAR run's budget is spent."""


def cifar_run(path: Path, work: Path, device: torch.device, precision: str, mode: str, iterations: int,
              batch: int, budget: float, summary: Summary, threads: int) -> dict[str, Any]:
    """ResNet-20 on CIFAR-10 as the pipeline trains it: `prepare` (the archive to ``work/prepared``, once, 45k/5k
    train/validation), the torch loader with the paper's augmentation, and the library's `Trainer` with the paper's
    schedule (lr 0.1, /10 at 1/2 and 3/4 of ``iterations``). Stops early (and says so) once ``budget`` seconds are
    spent, and then still scores the test split."""
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "prepared"
    if not (data / "manifest.json").exists():
        prepare(DataConfig(dataset="cifar10", source=str(path), out=str(data), val_fraction=0.1, num_threads=threads))
    manifest = load_manifest(data)
    res: dict[str, Any] = {"mode": mode, "precision": precision, "iterations_planned": iterations, "batch": batch,
                           **{f"{s}_images": manifest["splits"][s]["count"] for s in ("train", "val", "test")},
                           "loader_threads": threads, "prepare_s": time.perf_counter() - start}
    summary.data["cifar"] = res
    cfg = TrainConfig(iterations=iterations, batch_size=batch, milestones=[iterations // 2, iterations * 3 // 4],
                      workers=1, use_gpu="on" if device.type == "cuda" else "off", precision=precision,
                      compile=mode == "compile", log_every=max(1, min(100, iterations // 4)),
                      eval_every=max(1, iterations // 4), checkpoint_every=iterations, keep_checkpoints=1,
                      threads_per_worker=0, seed=0)
    windows: list[tuple[float, int, dict[str, float]]] = []

    def report(metrics: dict[str, float], iteration: int) -> None:
        if "train_error" in metrics:
            windows.append((time.perf_counter(), iteration, metrics))
            if time.perf_counter() - start > budget:
                raise OutOfTime(iteration)

    configure_torch(cfg, device, 1)
    source = DataSource(str(data), backend="torch", normalize="per_pixel", num_threads=threads)
    trainer = Trainer(cfg, ModelConfig(depth=20), source, tempfile.mkdtemp(prefix=f"run-{mode}-", dir=work),
                      device=device, report=report)
    train_start = time.perf_counter()
    try:
        final = trainer.run()  # trains, then scores the test split
        test, completed = final.metrics, True
    except OutOfTime:
        test, completed = trainer.test(), False
    train_s = time.perf_counter() - train_start
    it = trainer.state.iteration
    # Steady state: from the end of the first window (warm-up, compilation) to the last one's.
    (t0, i0, _), (t1, i1, last) = windows[0], windows[-1]
    steady = (t1 - t0) / (i1 - i0) if i1 > i0 else train_s / max(it, 1)
    res.update(iterations=it, completed=completed, train_s=train_s, first_window_s=t0 - train_start,
               step_ms=1000 * steady, images_per_s=batch / steady, data_wait_fraction=last.get("data_wait_fraction"),
               projected_full_s=(t0 - train_start) + steady * (iterations - i0),
               test_error=test.get("test_error"), test_top5_error=test.get("test_top5_error"),
               train_error_last_window=last.get("train_error"), total_s=time.perf_counter() - start)
    return res


# --- main ----------------------------------------------------------------------------------------

def run_part(summary: Summary, key: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; an error is recorded in the summary instead of ending the run."""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one failing mode must not lose the other results
        partial = summary.data.get(key) if isinstance(summary.data.get(key), dict) else {}  # e.g. the load time
        result = {**partial, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
    if isinstance(summary.data.get(key), list):
        summary.data[key].append(result)
    else:
        summary.data[key] = result
    summary.save()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Where to write the JSON summary.")
    p.add_argument("--cifar", type=Path, default=None, help="cifar10-jpeg.tar.gz (image folders train/ and test/).")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="Tiny nets, batches and schedule: exercises every part.")
    p.add_argument("--budget-s", type=float, default=540.0, help="Wall-clock budget for everything.")
    p.add_argument("--cifar-budget-s", type=float, default=330.0, help="Budget of the 64k-iteration run.")
    p.add_argument("--iterations", type=int, default=None, help="CIFAR run length (default 64000; smoke 4).")
    p.add_argument("--modes", default=None, help="Comma-separated of eager,compile,cudagraphs "
                                                  "(default: all on a GPU, eager on a CPU).")
    p.add_argument("--cifar-mode", choices=["eager", "compile"], default=None,
                   help="The CIFAR run's model: eager, or torch.compile (train.compile; default on a GPU).")
    p.add_argument("--loader-threads", type=int, default=None,
                   help="The CIFAR run's loader threads (data.num_threads; default: cores - 1, at most 8).")
    p.add_argument("--work", type=Path, default=None,
                   help="Folder for the prepared CIFAR-10 and the run's checkpoints (default: a temporary one).")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="Default: bf16 on a GPU, fp32 on a CPU (CPUs without AMX emulate bf16, 20-100x slower).")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"Peak for MFU (default: {H200_BF16_DENSE_TFLOPS:g} on a GPU, none on a CPU).")
    p.add_argument("--seconds", type=float, default=None, help="Timed seconds per throughput measurement.")
    return p


def _cifar_part(args: argparse.Namespace, device: torch.device, summary: Summary,
                left: Callable[[], float]) -> dict[str, Any]:
    """`cifar_run` in ``--cifar-mode`` (default: compile on a GPU) within the time left; after a failure there
    (e.g. a compile error), once more eager, keeping the error."""
    mode = args.cifar_mode or ("compile" if device.type == "cuda" else "eager")
    iterations = args.iterations or (4 if args.smoke else 64_000)
    batch = 8 if args.smoke else 128
    budget = min(args.cifar_budget_s, left() - 30)
    threads = args.loader_threads or max(1, min(8, (os.cpu_count() or 2) - 1))
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        return cifar_run(args.cifar, work, device, args.precision, mode, iterations, batch, budget, summary, threads)
    except Exception as exc:  # noqa: BLE001 - e.g. a compile failure: retry eager, keep the error
        if mode == "eager":
            raise
        first_error = f"{type(exc).__name__}: {exc}"
        res = cifar_run(args.cifar, work, device, args.precision, "eager", iterations, batch,
                        min(budget, left() - 30), summary, threads)
        return {**res, "error_in_" + mode: first_error}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _parser()
    args = p.parse_args(argv)
    end = time.perf_counter() + args.budget_s

    def left() -> float:  # of the wall-clock budget
        return end - time.perf_counter()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    modes = args.modes.split(",") if args.modes else (list(MODES) if gpu else ["eager"])
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; valid are {', '.join(MODES)}")
    nets = SMOKE_NETS if args.smoke else NETS
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    amp_dtype = torch.bfloat16 if args.precision == "bf16" else None
    peak = args.peak_tflops or (H200_BF16_DENSE_TFLOPS if gpu else None)
    seconds = args.seconds or (0.2 if args.smoke else 3.0)
    warmup, min_steps = (1, 1) if args.smoke else (5, 3)
    shared = (nets, device, amp_dtype, peak, seconds, warmup, min_steps)  # throughput's arguments after the mode
    summary = Summary(args.out, {
        "command": " ".join([sys.executable, *sys.argv]), "environment": {**machine_info(), "device": str(device)},
        "smoke": args.smoke, "precision": args.precision, "memory_format": "channels_last", "peak_tflops": peak,
        "flops_per_image": "3 x 2 x mult-adds (forward + backward)", "throughput": [], "cifar": None})
    summary.save()

    if "eager" in modes:
        for name in nets:
            run_part(summary, "throughput", lambda: throughput(name, "eager", *shared))
    if args.cifar is not None:
        run_part(summary, "cifar", lambda: _cifar_part(args, device, summary, left))
    for name in [n for n in ("resnet50", "resnet20", "resnet56", "resnet110") if n in nets]:
        for mode in [m for m in modes if m != "eager"]:
            if left() < 75:  # a compilation can take a minute; never start one without the time
                summary.data["throughput"].append({"net": name, "mode": mode, "skipped": "time budget"})
                summary.save()
                continue
            torch._dynamo.reset()
            run_part(summary, "throughput", lambda: throughput(name, mode, *shared))
    summary.data["elapsed_s"] = args.budget_s - left()
    summary.save()
    print(json.dumps(summary.data, indent=2))
    return summary.data


if __name__ == "__main__":
    main()
