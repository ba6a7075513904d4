"""GPU smoke test: the training core's GPU path, checked in a few minutes on a machine that has only
torch, numpy and Pillow (no Ray, DALI, MLflow or network).

Everything runs through the project's own `Trainer` / `fit` (the local launcher's loop) on the torch
loader. Checks, in this order:

- ``sync_free``: steps between logging windows make no host sync (CUDA: under
  ``torch.cuda.set_sync_debug_mode("error")``, which raises on one; both devices: no ``.item()`` and no
  tensor built from Python numbers, counted with a TorchDispatchMode);
- ``resume``: a run checkpointed mid-epoch and resumed to a longer schedule ends with the weights of
  the straight run (``train.deterministic``), and restarting reads the checkpoint onto the CPU;
- ``deterministic``: one step under ``torch.use_deterministic_algorithms(True)`` (CUDA raises on an
  operation that has no deterministic kernel);
- ``cudnn_benchmark``: training images/s with ``cudnn.benchmark`` on and off, side by side (CUDA);
- ``memory``: allocated GPU memory at each epoch end over several epochs of one loader (CUDA);
- ``bench``: bare training steps of ResNet-20 and -56, eager and torch.compile, at the precision
  ``train.precision: auto`` picks (CUDA: bf16). On the CPU only ResNet-20, eager unless ``--compile``
  (compiling takes about a minute per net on 2 cores).

Prints one JSON report (and writes it to ``--out``); a check that needs CUDA is "skipped" on the CPU.

    python scripts/gpu_smoke.py                                   # the GPU, generated data
    python scripts/gpu_smoke.py --source shared-data/cifar10-jpeg.tar.gz --out $OUT/smoke.json
    python scripts/gpu_smoke.py --device cpu                      # what the CPU can check (the tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnet_pipeline.data import DataConfig, prepare  # noqa: E402
from resnet_pipeline.environment import machine_info  # noqa: E402
from resnet_pipeline.models import ModelConfig, build_model  # noqa: E402
from resnet_pipeline.training.config import TrainConfig  # noqa: E402
from resnet_pipeline.training.loop import DataSource, Trainer, fit, resolve_precision, train_step  # noqa: E402


class HostSyncs(TorchDispatchMode):
    """Counts ``.item()``-like reads (``_local_scalar_dense``) and tensors built from Python data."""

    SYNCS = ("_local_scalar_dense", "lift_fresh", "lift_fresh_copy")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def generated_source(root: Path, classes: int = 4, per_class: int = 96, size: int = 32) -> Path:
    """A small image folder of colour classes (train/ and test/), for a run without real data."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(40, 220, (classes, 3))
    for split, n in (("train", per_class), ("test", per_class // 4)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(colours[c] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


class Smoke:
    def __init__(self, data: Path, device: torch.device, work: Path, depth: int, compile_: bool) -> None:
        self.data, self.device, self.work, self.depth, self.compile = data, device, work, depth, compile_
        self.cuda = device.type == "cuda"
        self.src = DataSource(str(data), backend="torch", normalize="per_pixel", num_threads=4 if self.cuda else 1)
        self.report: dict[str, Any] = {}

    def cfg(self, **overrides: Any) -> TrainConfig:
        base = dict(iterations=40, batch_size=128 if self.cuda else 32, milestones=[1000], workers=1,
                    use_gpu="on" if self.cuda else "off", log_every=10, eval_every=1000, checkpoint_every=15,
                    threads_per_worker=0 if self.cuda else 1, precision="auto", seed=0)
        return TrainConfig(**{**base, **overrides})

    def trainer(self, cfg: TrainConfig, folder: str) -> Trainer:
        return Trainer(cfg, ModelConfig(depth=self.depth), self.src, self.work / folder, device=self.device)

    def run(self, name: str, check: Callable[[], dict[str, Any]], needs_cuda: bool = False) -> None:
        started = time.perf_counter()
        if needs_cuda and not self.cuda:
            self.report[name] = {"status": "skipped", "why": "needs CUDA"}
            return
        try:
            self.report[name] = {"status": "ok", **check()}
        except Exception as exc:  # a failed check is reported, the others still run
            self.report[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                 "trace": traceback.format_exc(limit=4)}
        self.report[name]["seconds"] = round(time.perf_counter() - started, 1)

    # -- checks ------------------------------------------------------------------------------------

    def sync_free(self) -> dict[str, Any]:
        trainer = self.trainer(self.cfg(log_every=1000), "sync")
        trainer.wrap()
        trainer.train_until(3)  # loader workers, cuDNN's algorithm search, the optimizer state
        with HostSyncs() as syncs:
            if self.cuda:
                torch.cuda.set_sync_debug_mode("error")
            try:
                trainer.train_until(23)
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        if syncs.seen:
            raise AssertionError(f"host syncs in 20 steps: {syncs.seen}")
        return {"steps": 20, "host_syncs": 0, "sync_debug_mode": "error" if self.cuda else "n/a (CPU)"}

    def resume(self) -> dict[str, Any]:
        cfg = self.cfg(deterministic=True)
        straight = fit(cfg, ModelConfig(depth=self.depth), self.src, self.work / "straight", device=self.device)
        fit(dataclasses.replace(cfg, iterations=20), ModelConfig(depth=self.depth), self.src, self.work / "resumed",
            device=self.device)
        resumed = fit(cfg, ModelConfig(depth=self.depth), self.src, self.work / "resumed", device=self.device)
        differ = [k for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values())
                  if not torch.equal(a, b)]
        if differ:
            raise AssertionError(f"resumed weights differ from the straight run's: {differ[:5]}")
        return {"iterations": cfg.iterations, "resumed_at": 15, "identical": True,
                "train_error": resumed.metrics["train_error"]}

    def deterministic(self) -> dict[str, Any]:
        trainer = self.trainer(self.cfg(deterministic=True), "deterministic")
        trainer.wrap()
        trainer.train_until(2)
        return {"steps": 2, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}

    def cudnn_benchmark(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rounds in range(2):  # alternate, so that neither setting always runs warm
            for on in ((True, False) if rounds == 0 else (False, True)):
                trainer = self.trainer(self.cfg(log_every=1000), f"cudnn{int(on)}{rounds}")
                trainer.wrap()
                torch.backends.cudnn.benchmark = on
                trainer.train_until(10)  # warm-up (cuDNN's search happens here)
                torch.cuda.synchronize()
                started, wait = time.perf_counter(), trainer.window.data_wait_s
                trainer.train_until(60)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                out.setdefault("on" if on else "off", []).append(
                    {"images_per_s": round(50 * trainer.cfg.batch_size / seconds, 1),
                     "data_wait_fraction": round((trainer.window.data_wait_s - wait) / seconds, 3)})
        best = {k: max(r["images_per_s"] for r in v) for k, v in out.items()}
        return {**out, "on_vs_off": round(best["on"] / best["off"], 3)}

    def memory(self) -> dict[str, Any]:
        trainer = self.trainer(self.cfg(log_every=1000), "memory")
        trainer.wrap()
        epoch, allocated = len(trainer.loader), []
        for e in range(1, 7):
            trainer.train_until(e * epoch)
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated(self.device))
        growth = allocated[-1] - allocated[1]  # after the first epoch: the optimizer state exists
        if growth > 1 << 20:
            raise AssertionError(f"allocated memory grew by {growth / 2**20:.1f} MiB over 5 epochs: {allocated}")
        return {"epochs": 6, "batches_per_epoch": epoch, "allocated_mib": [round(a / 2**20, 1) for a in allocated],
                "peak_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)}

    def bench(self) -> dict[str, Any]:
        amp = resolve_precision("auto", self.device)
        batch, out = (128 if self.cuda else 16), {}
        for depth in ((20, 56) if self.cuda else (20,)):
            for graph in (("eager", "compiled") if self.compile else ("eager",)):
                model = build_model(ModelConfig(depth=depth), num_classes=10, input_size=32)
                model = model.to(self.device, memory_format=torch.channels_last)
                step_model = torch.compile(model) if graph == "compiled" else model
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                            fused=self.cuda or None)
                scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
                images = torch.randn(batch, 3, 32, 32, device=self.device).contiguous(memory_format=torch.channels_last)
                labels = torch.randint(0, 10, (batch,), device=self.device)
                started = time.perf_counter()
                train_step(step_model, images, labels, optimizer, scaler, amp)
                first = time.perf_counter() - started
                steps = 100 if self.cuda else 3
                for _ in range(3):
                    train_step(step_model, images, labels, optimizer, scaler, amp)
                if self.cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(steps):
                    train_step(step_model, images, labels, optimizer, scaler, amp)
                if self.cuda:
                    torch.cuda.synchronize()
                out[f"resnet{depth}-{graph}"] = {"images_per_s": round(steps * batch / (time.perf_counter() - started), 1),
                                                 "first_step_s": round(first, 2)}
        return {"precision": str(amp).replace("torch.", "") if amp else "fp32", "batch": batch, **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--source", help="CIFAR-10 archive or image folder to prepare (default: generated images)")
    ap.add_argument("--work", help="folder for the prepared data and checkpoints (default: a temporary one)")
    ap.add_argument("--depth", type=int, default=20, help="the CIFAR net the checks train")
    ap.add_argument("--out", help="also write the JSON report here")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="bench the torch.compile'd step too (default: on CUDA only)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible; use --device cpu")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        started = time.perf_counter()
        source = args.source or str(generated_source(work / "source"))
        data = work / "prepared"
        if not (data / "manifest.json").exists():
            prepare(DataConfig(dataset="cifar10" if args.source and args.source.endswith(".tar.gz") else "imagefolder",
                               source=source, out=str(data), val_fraction=0.1))
        smoke = Smoke(data, device, work, args.depth, args.compile if args.compile is not None else args.device == "cuda")
        smoke.report["environment"] = {**machine_info(), "device": str(device)}
        smoke.report["prepare_s"] = round(time.perf_counter() - started, 1)
        smoke.run("sync_free", smoke.sync_free)
        smoke.run("resume", smoke.resume)
        smoke.run("deterministic", smoke.deterministic)
        smoke.run("cudnn_benchmark", smoke.cudnn_benchmark, needs_cuda=True)
        smoke.run("memory", smoke.memory, needs_cuda=True)
        smoke.run("bench", smoke.bench)
        smoke.report["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(smoke.report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    failed = [k for k, v in smoke.report.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
