"""GPU benchmark: throughput and model FLOP utilisation of the project's ResNets, and the paper's
CIFAR-10 schedule (Sec. 4.2, 64k iterations) on a GPU-resident data loader.

Needs only torch, numpy and PIL (torchvision is recorded when present), plus this project's
`resnet_pipeline.models` and the training step of `resnet_pipeline.training.loop` (no Ray, DALI,
MLflow or YAML), so it runs on a machine that has PyTorch and nothing else. Every part has a time budget and the JSON summary is
rewritten after every measurement, so a run cut short still leaves its results.

    python scripts/gpu_bench.py --cifar ../shared/datasets/cifar10-jpeg.tar.gz --out gpu_bench.json
    python scripts/gpu_bench.py --device cpu --smoke --cifar tiny.tar.gz --out smoke.json   # seconds

Parts (in this order, so that the figures that matter most come first):
1. ``eager``: images/s and MFU of each net, bf16 autocast + channels_last, no compilation.
2. ``cifar``: ResNet-20 for the paper's 64k iterations (batch 128, lr 0.1, /10 at 32k and 48k,
   momentum 0.9, weight decay 1e-4) on CIFAR-10 decoded once into a uint8 tensor on the device;
   the augmentation (4-pixel pad, random 32x32 crop, horizontal flip) is done per epoch as batched
   tensor ops. Reports the wall time and the test error (paper, Table 6: 8.75%).
3. ``compiled``: the throughput of part 1 with torch.compile, and with torch.compile + CUDA graphs
   (mode="reduce-overhead").

MFU = images/s x 3 x 2 x multiply-adds per image / peak (forward + backward ~ 3 forwards, 2 FLOPs
per multiply-add); peak 989 TFLOP/s, the H100/H200 SXM dense bf16 figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnet_pipeline.models import resnet_cifar, resnet_imagenet, resnet_mult_adds  # noqa: E402
from resnet_pipeline.training.loop import evaluate, train_step  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100/H200 SXM spec sheet, dense (no sparsity)

# name: (family, depth, input side, batch)
NETS: dict[str, tuple[str, int, int, int]] = {
    "resnet20": ("cifar", 20, 32, 128), "resnet56": ("cifar", 56, 32, 128), "resnet110": ("cifar", 110, 32, 128),
    "resnet50": ("imagenet", 50, 224, 256),
}
SMOKE_NETS: dict[str, tuple[str, int, int, int]] = {"resnet20": ("cifar", 20, 32, 8),
                                                    "resnet50": ("imagenet", 50, 32, 2)}
MODES = ("eager", "compile", "cudagraphs")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Summary:
    """The JSON summary, rewritten (atomically) after every measurement."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_net(name: str, nets: dict, device: torch.device):
    family, depth, size, batch = nets[name]
    model = resnet_cifar(depth, 10) if family == "cifar" else resnet_imagenet(depth, 1000)
    macs = resnet_mult_adds(model, size)
    return model.to(device, memory_format=torch.channels_last), macs, size, batch, 10 if family == "cifar" else 1000


def make_optimizer(model: torch.nn.Module, device: torch.device, lr: float = 0.1) -> torch.optim.Optimizer:
    # The paper's SGD (Sec. 4.2); fused on a GPU: one kernel for the whole update.
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4,
                           **({"fused": True} if device.type == "cuda" else {"foreach": True}))


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    if mode == "eager":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs" else None)


def step_fn(model, opt, device: torch.device, mode: str, amp_dtype) -> Callable:
    """One training step (the project's `train_step`), marking CUDA-graph step boundaries."""
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if mode == "cudagraphs" else None

    def step(x, y):
        if mark is not None:
            mark()
        return train_step(model, x, y, opt, scaler, amp_dtype)

    return step


def throughput(name: str, mode: str, nets: dict, device: torch.device, amp_dtype, peak: float | None,
               seconds: float, warmup: int, min_steps: int = 3) -> dict[str, Any]:
    model, macs, size, batch, classes = build_net(name, nets, device)
    opt = make_optimizer(model, device, lr=0.01)
    step = step_fn(compiled(model, mode), opt, device, mode, amp_dtype)
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


# --- CIFAR-10 on the device --------------------------------------------------------------------

def load_cifar(path: Path, device: torch.device, threads: int = 8) -> dict[str, Any]:
    """Decode the image-folder archive (``*/train|test/<class>/*.jpg``) once into uint8 tensors
    [N, 3, 32, 32] on ``device``."""
    blobs: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] in blobs:
                blobs[parts[-3]].append((parts[-2], tar.extractfile(m).read()))
    classes = sorted({c for split in blobs.values() for c, _ in split})

    def decode(b: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    out: dict[str, Any] = {"classes": classes}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        for split, items in blobs.items():
            images = np.stack(list(pool.map(decode, [b for _, b in items], chunksize=256)))  # (N, 32, 32, 3)
            out[split] = (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
                          torch.tensor([classes.index(c) for c, _ in items], device=device))
    return out


class DeviceCifarLoader:
    """Batches of the paper's training augmentation (Sec. 4.2), computed per epoch on the device.

    Subtract the per-pixel mean (divide by the per-channel std, as the project's loaders do), pad 4
    zeros on each side, take a random 32x32 crop, flip half the images; reshuffled every epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, seed: int = 0) -> None:
        if images.shape[0] < batch:
            raise ValueError(f"{images.shape[0]} training images, fewer than one batch of {batch}")
        self.images, self.labels, self.batch = images, labels, batch
        x = images.float()
        self.mean = x.mean(0, keepdim=True)  # (1, 3, 32, 32) per-pixel mean
        self.std = x.std(dim=(0, 2, 3), keepdim=True)  # (1, 3, 1, 1) per-channel std
        self.gen = torch.Generator(device=images.device).manual_seed(seed)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = self.images.shape[0], self.images.device
        perm = torch.randperm(n, device=dev, generator=self.gen)
        x = F.pad(self.normalize(self.images[perm]), (4, 4, 4, 4))  # (N, 3, 40, 40), zero = the mean
        shift = torch.randint(0, 9, (2, n), device=dev, generator=self.gen)
        ar = torch.arange(32, device=dev)
        rows = (shift[0][:, None] + ar)[:, None, :, None].expand(n, 3, 32, 40)
        x = x.gather(2, rows)
        cols = (shift[1][:, None] + ar)[:, None, None, :].expand(n, 3, 32, 32)
        x = x.gather(3, cols)
        flip = torch.rand(n, device=dev, generator=self.gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous(memory_format=torch.channels_last), self.labels[perm]

    def __iter__(self):
        x, y = self.epoch()
        for i in range(x.shape[0] // self.batch):  # drop the last partial batch
            yield x[i * self.batch:(i + 1) * self.batch], y[i * self.batch:(i + 1) * self.batch]


def cifar_run(path: Path, device: torch.device, amp_dtype, mode: str, iterations: int, batch: int,
              budget: float, summary: Summary) -> dict[str, Any]:
    """ResNet-20 for ``iterations`` of the paper's schedule; stops early (and says so) at ``budget``."""
    start = time.perf_counter()
    data = load_cifar(path, device)
    sync(device)
    res: dict[str, Any] = {"mode": mode, "iterations_planned": iterations, "batch": batch,
                           "train_images": int(data["train"][0].shape[0]), "test_images": int(data["test"][0].shape[0]),
                           "load_s": time.perf_counter() - start}
    summary.data["cifar"] = res
    loader = DeviceCifarLoader(*data["train"], batch)
    milestones = [iterations // 2, iterations * 3 // 4]  # 32k and 48k of 64k
    torch.manual_seed(0)
    base = resnet_cifar(20, len(data["classes"])).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(base, device, lr=0.1)
    step = step_fn(compiled(base, mode), opt, device, mode, amp_dtype)
    wrong_sum = torch.zeros((), device=device, dtype=torch.long)
    seen, it, first_step_s, stopped = 0, 0, None, False
    train_start = time.perf_counter()
    while it < iterations and not stopped:
        for x, y in loader:
            opt.param_groups[0]["lr"] = 0.1 * 0.1 ** sum(it >= m for m in milestones)
            _, wrong = step(x, y)
            it += 1
            if it >= iterations - 390:  # training error over about the last epoch
                wrong_sum += wrong
                seen += y.shape[0]
            if it == 2:
                sync(device)
                first_step_s = time.perf_counter() - train_start  # compilation / graph capture
            if it % 1000 == 0:
                sync(device)
                if time.perf_counter() - start > budget:
                    stopped = True
            if it >= iterations or stopped:
                break
    sync(device)
    train_s = time.perf_counter() - train_start
    test_x, test_y = data["test"]
    batches = [(loader.normalize(test_x[i:i + 1000]), test_y[i:i + 1000]) for i in range(0, test_x.shape[0], 1000)]
    test = evaluate(base, batches, device, amp_dtype)  # the eager module: no recompilation for eval mode
    steady = (train_s - (first_step_s or 0)) / max(it - 2, 1)
    res.update(iterations=it, completed=it >= iterations, train_s=train_s, compile_s=first_step_s,
               step_ms=1000 * steady, images_per_s=batch / steady,
               projected_full_s=(first_step_s or 0) + steady * (iterations - 2),
               test_error=test["top1_error"], test_top5_error=test.get("top5_error"),
               train_error_last_epoch=float(wrong_sum) / seen if seen else None,
               total_s=time.perf_counter() - start)
    return res


# --- main ----------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    try:
        import torchvision  # not needed here; recorded when present
    except ImportError:
        torchvision = None
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__ if torchvision else None, "numpy": np.__version__,
           "device": str(device), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return env


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
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
    p.add_argument("--cifar-mode", default=None, help="Mode of the CIFAR run (default: cudagraphs on a GPU).")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="Default: bf16 on a GPU, fp32 on a CPU (CPUs without AMX emulate bf16, 20-100x slower).")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"Peak for MFU (default: {H200_BF16_DENSE_TFLOPS:g} on a GPU, none on a CPU).")
    p.add_argument("--seconds", type=float, default=None, help="Timed seconds per throughput measurement.")
    args = p.parse_args(argv)

    deadline = Deadline(args.budget_s)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    gpu = device.type == "cuda"
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
    summary = Summary(args.out, {
        "command": " ".join([sys.executable, *sys.argv]), "environment": environment(device), "smoke": args.smoke,
        "precision": args.precision, "memory_format": "channels_last", "peak_tflops": peak,
        "flops_per_image": "3 x 2 x mult-adds (forward + backward)", "throughput": [], "cifar": None})
    summary.save()

    if "eager" in modes:
        for name in nets:
            run_part(summary, "throughput", lambda: throughput(name, "eager", nets, device, amp_dtype, peak, seconds,
                                                               warmup, min_steps))
    if args.cifar is not None:
        mode = args.cifar_mode or ("cudagraphs" if gpu else "eager")
        iterations = args.iterations or (4 if args.smoke else 64_000)
        batch = 8 if args.smoke else 128
        budget = min(args.cifar_budget_s, deadline.left() - 30)

        def cifar() -> dict[str, Any]:
            try:
                return cifar_run(args.cifar, device, amp_dtype, mode, iterations, batch, budget, summary)
            except Exception as exc:  # noqa: BLE001 - e.g. a compile failure: retry eager, keep the error
                if mode == "eager":
                    raise
                first_error = f"{type(exc).__name__}: {exc}"
                res = cifar_run(args.cifar, device, amp_dtype, "eager", iterations, batch,
                                min(budget, deadline.left() - 30), summary)
                return {**res, "error_in_" + mode: first_error}

        run_part(summary, "cifar", cifar)
    order = ["resnet50", "resnet20", "resnet56", "resnet110"]
    for name in [n for n in order if n in nets]:
        for mode in [m for m in modes if m != "eager"]:
            if deadline.left() < 75:  # a compilation can take a minute; never start one without the time
                summary.data["throughput"].append({"net": name, "mode": mode, "skipped": "time budget"})
                summary.save()
                continue
            torch._dynamo.reset()
            run_part(summary, "throughput", lambda: throughput(name, mode, nets, device, amp_dtype, peak, seconds,
                                                               warmup, min_steps))
    summary.data["elapsed_s"] = args.budget_s - deadline.left()
    summary.save()
    print(json.dumps(summary.data, indent=2))
    return summary.data


if __name__ == "__main__":
    main()
