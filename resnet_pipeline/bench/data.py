"""Data loader benchmarks (`python cli.py bench data | resume`): images/s of each backend with the
training augmentation, decoders alone, and the cost of resuming a loader mid-epoch."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from pathlib import Path

from resnet_pipeline.data.loader import cuda_available, dali_available, make_loader
from resnet_pipeline.environment import machine_info


def available_backends() -> list[str]:
    """The concrete backends this machine can run, fastest first."""
    found = []
    if dali_available():
        found += (["dali-gpu"] if cuda_available() else []) + ["dali-cpu"]
    return found + ["torch"]


def bench_data(data_dir: str | Path, *, backends: list[str] | None = None, split: str = "train",
               batch_size: int = 256, num_threads: int = 2, normalize: str = "auto",
               warmup_batches: int = 10, seconds: float = 5.0, rounds: int = 3) -> dict:
    """Time each backend on ``split`` with the training augmentation; report the median of rounds.

    Every backend gets the same ``num_threads``, used as each runs best on the same cores: torch runs that many worker
    processes (more were slower here), a DALI CPU training loader two pipelines of that many threads each
    (`dali.pipeline_parts`; each row's ``layout`` says which). The backends take turns, ``rounds`` times, every other
    round in reverse order, so a change in the machine's load hits all of them alike and none always runs right after
    another's shutdown. Each turn builds a fresh loader, lets ``warmup_batches`` pass untimed (worker start-up, first
    allocations), then counts images for at least ``seconds``, across epochs if need be; GPU work is synchronised before
    the clock stops. Also reports images per CPU-second (this process and its worker processes). Returns {"results":
    [{backend, images_per_s (median), rounds_images_per_s, images_per_cpu_s, ...}], "machine": {...}}.
    """
    import torch

    names = backends or available_backends()
    rates: dict[str, list[float]] = {}
    layout: dict[str, str] = {}
    per_cpu: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for backend in (names if round_ % 2 == 0 else names[::-1]):
            # A fresh loader per turn: an idle loader left alive would refill its prefetch queue (torch workers, DALI
            # threads) while the next backend is being timed.
            loader = make_loader(data_dir, split, train=True, batch_size=batch_size, backend=backend,
                                 num_threads=num_threads, normalize=normalize)
            batches = _batches(loader)
            for _ in range(warmup_batches):
                next(batches)
            images, start, cpu_start = 0, time.perf_counter(), _cpu_seconds()
            while time.perf_counter() - start < seconds:
                x, _ = next(batches)
                images += x.shape[0]
            if x.is_cuda:
                torch.cuda.synchronize()
            elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
            pipelines = len(getattr(loader, "pipelines", ()))
            layout[loader.backend] = (f"{pipelines} pipeline{'s' * (pipelines > 1)} x {num_threads} threads"
                                      if pipelines else f"{num_threads} worker processes")
            rates.setdefault(loader.backend, []).append(images / elapsed)
            per_cpu.setdefault(loader.backend, []).append(images / max(cpu, 1e-9))
            batches.close()
            del loader, batches, x
            gc.collect()  # shuts the torch workers down now, not at some later collection
    results = [{"backend": name, "images_per_s": statistics.median(r), "rounds_images_per_s": r,
                "images_per_cpu_s": statistics.median(per_cpu[name]), "batch_size": batch_size,
                "num_threads": num_threads, "layout": layout[name]} for name, r in rates.items()]
    return {"results": results, "data_dir": str(data_dir), "split": split, "normalize": normalize,
            "seconds_per_round": seconds, "rounds": rounds, "machine": machine_info()}


def bench_decoders(data_dir: str | Path, *, split: str = "train", count: int = 2000, rounds: int = 3) -> list[dict]:
    """Decoding alone, one thread, on the first ``count`` files of ``split``: TorchCodec (the torch backend's),
    torchvision.io (deprecated as of torchvision 0.29) and Pillow, taking turns; the median images/s, and whether each
    decodes every file to TorchCodec's exact pixels."""
    import io
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from torchcodec.decoders import decode_image

    from resnet_pipeline.data.loader import read_file_list
    from resnet_pipeline.data.prepare import load_manifest

    root = Path(data_dir)
    files, _ = read_file_list(root / load_manifest(root)["splits"][split]["list"])
    blobs = [(root / f).read_bytes() for f in files[:count]]

    def torchvision_io(blob: bytes) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image as tv_decode

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return tv_decode(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def pillow(blob: bytes) -> torch.Tensor:
        return torch.from_numpy(np.array(Image.open(io.BytesIO(blob)).convert("RGB"))).permute(2, 0, 1)

    decoders = {"torchcodec": lambda blob: decode_image(blob, mode="RGB"), "torchvision.io": torchvision_io,
                "pillow": pillow}
    reference = [decoders["torchcodec"](b) for b in blobs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    try:
        for round_ in range(rounds):
            for name in (list(decoders) if round_ % 2 == 0 else list(decoders)[::-1]):
                start = time.perf_counter()
                for blob in blobs:
                    decoders[name](blob)
                rates[name].append(len(blobs) / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return [{"decoder": name, "images_per_s": statistics.median(r), "files": len(blobs),
             "same_pixels": all(torch.equal(decoders[name](b), ref) for b, ref in zip(blobs, reference))}
            for name, r in rates.items()]


def bench_resume(data_dir: str | Path, *, backends: list[str] | None = None, batch_size: int = 128,
                 num_threads: int = 2, normalize: str = "auto", position: float = 0.75) -> dict:
    """What a restart costs the training loader, per backend: building it (to its first batch), and reaching batch
    ``position`` (a fraction of an epoch) of a checkpointed epoch, either from the loader's saved state
    (`load_state_dict`: the torch sampler starts there, DALI restores its checkpoint and skips without decoding) or by
    reading and decoding every batch before it, as the loop did before (it skipped them with ``continue``). Also the
    build cost that a loader built once per run saves each epoch."""
    out = []
    for backend in backends or available_backends():
        def build():
            return make_loader(data_dir, "train", train=True, batch_size=batch_size, backend=backend,
                               num_threads=num_threads, normalize=normalize, seed=1)

        start = time.perf_counter()
        loader = build()
        batches = iter(loader)
        next(batches)
        build_s = time.perf_counter() - start
        epoch, target = len(loader), max(1, int(len(loader) * position))
        for _ in range(target - 1):  # untimed: the state a checkpoint at that batch holds
            next(batches)
        state = loader.state_dict()
        batches.close()
        del loader, batches
        gc.collect()
        # Then to that batch from the saved state, and by reading every batch before it.
        seconds = []
        for restore, count in ((state, 1), (None, target + 1)):
            start = time.perf_counter()
            loader = build()
            if restore is not None:
                loader.load_state_dict(restore)
            batches = iter(loader)
            for _ in range(count):
                next(batches)
            seconds.append(time.perf_counter() - start)
            batches.close()
            del loader, batches
            gc.collect()
        restore_s, replay_s = seconds
        out.append({"backend": backend, "batches_per_epoch": epoch, "position": target, "build_s": build_s,
                    "restore_s": restore_s, "replay_s": replay_s, "replay_vs_restore": replay_s / restore_s})
    return {"results": out, "data_dir": str(data_dir), "batch_size": batch_size, "num_threads": num_threads,
            "machine": machine_info()}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its children (torch's workers) so far.

    Images per CPU-second is a second view of speed, steadier than images/s when other jobs share the machine."""
    import psutil  # a dependency of dvc

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that exited meanwhile
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _batches(loader):
    """Endless batches, epoch after epoch."""
    while True:
        yield from loader
