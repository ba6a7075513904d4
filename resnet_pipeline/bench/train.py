"""Training benchmarks: `python cli.py bench train | depths | overhead`.

- `bench_train`: the Ray Train path against the bare single-process loop, and the bare loop across precisions
  (fp32/bf16) and memory formats (channels_last/NCHW). Same model, batch, data loader and cores, side by side in one
  run (these machines are shared and noisy, so only ratios measured together mean much). Throughput is the median of
  the per-window images/s after the first window (which includes warm-up); start-up is reported apart.
- `bench_depths`: bare training steps on synthetic tensors (no loader) for each depth, precision and graph mode (eager
  or torch.compile), with the effective GFLOP/s (images/s x 3 x 2 x multiply-adds; backward ~ 2x forward) against the
  CPU's fp32 peak.
- `bench_overhead`: what a sweep costs per trial beyond its training steps and evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from resnet_pipeline.environment import machine_info
from resnet_pipeline.models import ModelConfig
from resnet_pipeline.training.config import TrainConfig

PRECISIONS = ("fp32", "bf16")
GRAPHS = ("eager", "compiled")  # `bench depths`: the model as is, or in torch.compile (train.compile)
MEMORY_FORMATS = ("channels_last", "nchw")


def _choices(values: tuple[str, ...], valid: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``values`` once each, in order (one named twice would run twice and overwrite its reference), each checked
    against ``valid``."""
    for v in values:
        if v not in valid:
            raise ValueError(f"unknown {name} {v!r}; valid are {', '.join(valid)}")
    return tuple(dict.fromkeys(values))


@contextmanager
def _stopping_ray_it_starts() -> Iterator[None]:
    """On the way out, shut down a Ray instance started inside (one running before is left alone): its workers' last
    log lines then reach stderr while `--json` keeps stdout to the JSON."""
    was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        yield
    finally:
        if not was_running and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


class _Enough(Exception):
    """Raised from the report callback to end a timed bare run once it has enough windows."""


def bench_train(data_dir: str | Path, *, depth: int = 20, batch_size: int = 128, iterations: int = 60,
                log_every: int = 10, precisions: tuple[str, ...] = ("fp32",),
                memory_formats: tuple[str, ...] = ("channels_last",),
                modes: tuple[str, ...] = ("bare", "ray-1", "ray-2"), backend: str = "dali-cpu",
                variant_seconds: float = 45.0, rounds: int = 1) -> dict[str, Any]:
    """Images/s of each mode at the first precision and memory format, then of the bare loop at every other combination.

    The modes run ``rounds`` times, in reverse order every other round (so a drift in the machine's load hits them
    alike); ``summary`` has each mode's median images/s and its median ratio to the bare loop of the same round. The
    other combinations run once, after, log every iteration and stop after ``variant_seconds`` once they have 3 windows:
    bf16 is emulated on CPUs without AVX512-BF16/AMX and runs 20-100x slower than fp32 there. ``vs_bare`` is each row
    against the bare loop at the first combination in the same round.
    """
    if rounds < 1:
        raise ValueError(f"rounds: {rounds} is not valid; use an integer >= 1")
    modes = tuple(dict.fromkeys(modes))
    precisions = _choices(precisions, PRECISIONS, "precision")
    memory_formats = _choices(memory_formats, MEMORY_FORMATS, "memory format")
    from resnet_pipeline.training.driver import check_data_dir

    data = check_data_dir(data_dir)
    base = TrainConfig(iterations=iterations, batch_size=batch_size, log_every=log_every, eval_every=iterations,
                       checkpoint_every=iterations, milestones=[iterations * 10], precision=precisions[0],
                       channels_last=memory_formats[0] == "channels_last", experiment="bench-train")
    model_cfg = ModelConfig(depth=depth)
    first = (precisions[0], memory_formats[0])
    main = [(m, *first) for m in modes]
    runs = [(r, *run) for r in range(rounds) for run in (main if r % 2 == 0 else main[::-1])]
    if "bare" in modes:
        runs += [(0, "bare", p, f) for p in precisions for f in memory_formats if (p, f) != first]
    with _stopping_ray_it_starts(), tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        results = [_bench_run(base, model_cfg, data, backend, Path(tmp), i, *run, variant=run[2:] != first,
                              variant_seconds=variant_seconds) for i, run in enumerate(runs)]
    summary = _against_bare(results, modes, *first)
    return {"depth": depth, "batch_size": batch_size, "iterations": iterations, "precisions": list(precisions),
            "memory_formats": list(memory_formats), "backend": backend, "data_dir": str(data),
            "variant_seconds": variant_seconds, "rounds": rounds,
            "machine": machine_info(), "results": results, "summary": summary}


def _bench_run(base: TrainConfig, model_cfg: ModelConfig, data: Path, backend: str, tmp: Path, i: int, round_: int,
               mode: str, precision: str, fmt: str, *, variant: bool, variant_seconds: float) -> dict[str, Any]:
    """One timed run of `bench_train` (the ``i``-th, in ``tmp``): its row."""
    start = time.perf_counter()
    if mode == "bare":
        cfg = dataclasses.replace(base, workers=1, threads_per_worker=os.cpu_count() or 1, precision=precision,
                                  channels_last=fmt == "channels_last", log_every=1 if variant else base.log_every)
        speeds, waits = _bare_run(cfg, model_cfg, data, backend, tmp / f"bare{i}", variant_seconds if variant else None)
    else:
        # A run name and results folder of its own: a finished run of the same name would be taken as done
        # ("nothing to do") instead of trained again.
        cfg = dataclasses.replace(base, workers=int(mode.split("-")[1]), run_name=f"{mode}-{round_}",
                                  storage_path=str(tmp / f"results{i}"))
        speeds, waits = _ray_run(cfg, model_cfg, data, backend, tmp / "mlflow.db")
    wall = time.perf_counter() - start
    ips = statistics.median(speeds[1:] if len(speeds) > 2 else speeds)  # after the first window (warm-up)
    row = {"round": round_, "mode": mode, "precision": precision, "memory_format": fmt, "images_per_s": ips,
           # the part of the training time spent waiting for the loader (rank 0's, median window)
           "data_wait_fraction": statistics.median(waits) if waits else None,
           "windows": len(speeds), "wall_s": wall, "train_s": None, "overhead_s": None}
    if not variant:  # a full run: start-up and evaluation are what the wall time adds
        train_s = base.iterations * base.batch_size / ips
        row.update(train_s=train_s, overhead_s=wall - train_s)
    return row


def _bare_run(cfg: TrainConfig, model_cfg: ModelConfig, data: Path, backend: str, run_dir: Path,
              stop_after_s: float | None) -> tuple[list[float], list[float]]:
    """The single-process loop (`fit`): each window's images/s and data-wait fraction. With ``stop_after_s``, it
    stops once it has 3 windows and has run that long."""
    from resnet_pipeline.training.loop import DataSource, fit

    speeds: list[float] = []
    waits: list[float] = []
    start = time.perf_counter()

    def report(m: dict[str, float], step: int) -> None:
        if "images_per_s" in m:
            speeds.append(m["images_per_s"])
            waits.append(m["data_wait_fraction"])
            if stop_after_s is not None and len(speeds) >= 3 and time.perf_counter() - start > stop_after_s:
                raise _Enough

    with suppress(_Enough):
        fit(cfg, model_cfg, DataSource(str(data), backend, num_threads=1), run_dir, report=report)
    return speeds, waits


def _ray_run(cfg: TrainConfig, model_cfg: ModelConfig, data: Path, backend: str,
             store: Path) -> tuple[list[float], list[float]]:
    """The Ray Train path (`training.driver.train`, MLflow in ``store``): each window's images/s and data-wait
    fraction, as rank 0 logged them."""
    from resnet_pipeline import tracking
    from resnet_pipeline.training.driver import train

    summary = train(cfg, model_cfg, data, backend=backend, num_threads=cfg.workers, tracking_uri=f"sqlite:///{store}")
    return tuple([v for _, v in tracking.metric_history(summary["tracking_uri"], summary["run_id"], key)]
                 for key in ("images_per_s", "data_wait_fraction"))


def _against_bare(results: list[dict], modes: tuple[str, ...], precision: str, fmt: str) -> list[dict]:
    """Sets each row's ``vs_bare`` (against the same round's bare loop at the first precision and memory format);
    returns each mode's medians over the rounds at that combination."""
    bare = {r["round"]: r["images_per_s"] for r in results
            if (r["mode"], r["precision"], r["memory_format"]) == ("bare", precision, fmt)}
    for r in results:
        r["vs_bare"] = r["images_per_s"] / bare[r["round"]] if r["round"] in bare else None
    summary = []
    for mode in modes:
        rows = [r for r in results if (r["mode"], r["precision"], r["memory_format"]) == (mode, precision, fmt)]
        ratios = [r["vs_bare"] for r in rows if r["vs_bare"] is not None]
        summary.append({"mode": mode, "rounds": len(rows),
                        "images_per_s": statistics.median(r["images_per_s"] for r in rows),
                        "data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in rows
                                                                if r["data_wait_fraction"] is not None),
                        "vs_bare": statistics.median(ratios) if ratios else None,
                        "vs_bare_min": min(ratios, default=None), "vs_bare_max": max(ratios, default=None)})
    return summary


# --- depths ------------------------------------------------------------------------------------

def cpu_peak() -> dict[str, Any]:
    """Estimated fp32 peak of this CPU: cores x clock x FLOPs per cycle per core.

    FLOPs per cycle assume two FMA pipes per core (Zen 2+, Intel since Haswell): 2 x 8 lanes x 2 with AVX2+FMA = 32,
    64 with AVX-512, 16 with AVX alone, 8 with SSE. The clock is the "cpu MHz" that /proc/cpuinfo reports (the nominal
    clock in a VM; boost clocks would raise the peak).
    """
    flags: set[str] = set()
    mhz = None
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and mhz is None:
                mhz = float(value)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16 if "avx" in flags else 8
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ghz = (mhz or 0) / 1000
    return {"cores": cores, "ghz": ghz, "flops_per_cycle": per_cycle, "gflops": cores * ghz * per_cycle or None,
            "formula": f"{cores} cores x {ghz:.3f} GHz x {per_cycle} FLOP/cycle (fp32 FMA)",
            "amx": "amx_tile" in flags, "avx512_bf16": "avx512_bf16" in flags}


def _timed_steps(step, batch: int, seconds: float, min_steps: int) -> tuple[float, float]:
    """(images/s, images per CPU-second of this process) of ``step()`` (which must finish its work before returning)
    over at least ``seconds`` and ``min_steps`` steps."""
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < min_steps or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start), steps * batch / (time.process_time() - cpu_start)


def bench_depths(*, cifar_depths: tuple[int, ...] = (20, 32, 44, 56, 110),
                 imagenet_depths: tuple[int, ...] = (18, 34, 50), imagenet_input: int = 64,
                 batch_size: int = 128, precisions: tuple[str, ...] = ("fp32",), channels_last: bool = True,
                 graphs: tuple[str, ...] = ("eager",), seconds: float = 5.0, min_steps: int = 2,
                 rounds: int = 2) -> dict[str, Any]:
    """Images/s of bare training steps (`loop.train_step`, SGD) on synthetic tensors per depth, precision and graph
    mode.

    CIFAR nets at 32x32 with 10 classes; ImageNet nets (Table 1 stem and stages) at ``imagenet_input`` with 1000
    classes. Every (net, precision, graph) gets its own model and one untimed warm-up step (``first_step_s``: oneDNN
    primitive creation, and for graph "compiled" the compilation: the model is wrapped in ``torch.compile``, as
    ``train.compile`` does); then they take turns for ``rounds`` rounds of at least ``seconds`` each, and the median
    round is reported. ``vs_first``: images/s against the same net at the first precision and graph. The peak is
    fp32's, so GFLOP/s fractions of it are given for fp32 rows only.
    """
    import torch

    precisions, graphs = _choices(precisions, PRECISIONS, "precision"), _choices(graphs, GRAPHS, "graph")
    torch.set_num_threads(os.cpu_count() or 1)
    nets = [("cifar", d, 32, 10) for d in cifar_depths] + [("imagenet", d, imagenet_input, 1000)
                                                           for d in imagenet_depths]
    entries = _step_entries(nets, batch_size, channels_last, graphs, precisions)
    # Every net is a `ResNet`, so every compiled one is a recompilation of the same forward: past dynamo's limit (8)
    # the rest would quietly run eager.
    compiled = sum(e["graph"] == "compiled" for e in entries)
    limits = dict(recompile_limit=max(8, compiled), accumulated_recompile_limit=max(256, 2 * compiled))
    with torch._dynamo.config.patch(**limits):
        for e in entries:
            start = time.perf_counter()
            e["step"]()  # warm-up: first allocations, oneDNN primitive creation, compilation
            e["first_step_s"] = time.perf_counter() - start
        for _ in range(rounds):
            for e in entries:
                e["rates"].append(_timed_steps(e["step"], batch_size, seconds, min_steps))
    peak = cpu_peak()
    results = [_depth_row(e, peak) for e in entries]
    first = {(r["family"], r["depth"]): r["images_per_s"] for r in results
             if (r["precision"], r["graph"]) == (precisions[0], graphs[0])}
    for r in results:
        r["vs_first"] = r["images_per_s"] / first[r["family"], r["depth"]]
    return {"batch_size": batch_size, "precisions": list(precisions),
            "memory_format": "channels_last" if channels_last else "nchw", "graphs": list(graphs),
            "seconds_per_round": seconds, "rounds": rounds, "threads": torch.get_num_threads(), "peak": peak,
            "machine": machine_info(), "results": results}


def _step_entries(nets: list[tuple[str, int, int, int]], batch_size: int, channels_last: bool,
                  graphs: tuple[str, ...], precisions: tuple[str, ...]) -> list[dict[str, Any]]:
    """One entry per (net, graph, precision): its own model and optimizer, and a ``step`` that trains one batch
    of fixed synthetic tensors; ``nets`` are (family, depth, input size, classes)."""
    import torch

    from resnet_pipeline.models import count_params, resnet_cifar, resnet_imagenet, resnet_mult_adds
    from resnet_pipeline.training.loop import resolve_precision, train_step

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    entries = []
    for family, depth, size, classes in nets:
        x = torch.randn(batch_size, 3, size, size, generator=gen).contiguous(memory_format=fmt)
        y = torch.randint(0, classes, (batch_size,), generator=gen)
        counts = None  # (params, mult-adds): the same in every combination, counted once
        for graph, precision in ((g, p) for g in graphs for p in precisions):
            torch.manual_seed(depth)  # the same initial weights in every combination
            model = (resnet_cifar(depth, classes) if family == "cifar" else resnet_imagenet(depth, classes)).to(
                memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            amp_dtype = resolve_precision(precision, torch.device("cpu"))
            net = torch.compile(model) if graph == "compiled" else model
            counts = counts or (count_params(model), resnet_mult_adds(model, size))
            entries.append({"family": family, "depth": depth, "input_size": size, "precision": precision,
                            "graph": graph, "params": counts[0], "mult_adds": counts[1], "rates": [],
                            "step": lambda m=net, x=x, y=y, o=opt, s=scaler, a=amp_dtype:
                                train_step(m, x, y, o, s, a)[0].item()})
    return entries


def _depth_row(e: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """One net's `bench_depths` row: the median round's images/s and its effective GFLOP/s (for fp32, against the
    CPU's peak)."""
    ips = statistics.median(r[0] for r in e["rates"])
    per_cpu_s = statistics.median(r[1] for r in e["rates"])
    flop = 3 * 2 * e["mult_adds"] / 1e9  # GFLOP per image: forward + backward ~ 3 forwards, 2 per mult-add
    fp32 = e["precision"] == "fp32" and peak["gflops"]
    return {"family": e["family"], "depth": e["depth"], "input_size": e["input_size"],
            "precision": e["precision"], "graph": e["graph"], "params": e["params"], "mult_adds": e["mult_adds"],
            "images_per_s": ips, "rounds_images_per_s": [r[0] for r in e["rates"]],
            "images_per_cpu_s": per_cpu_s, "first_step_s": e["first_step_s"], "gflops": ips * flop,
            "peak_fraction": ips * flop / peak["gflops"] if fp32 else None,
            # per CPU-second against one core's peak: less sensitive to other jobs' load
            "gflops_per_cpu_s": per_cpu_s * flop,
            "core_peak_fraction": per_cpu_s * flop * peak["cores"] / peak["gflops"] if fp32 else None}


# --- sweep overhead ----------------------------------------------------------------------------

def bench_overhead(data_dir: str | Path, *, trials: int = 3, iterations: int = 1, batch_size: int = 128,
                   depth: int = 20, backend: str = "dali-cpu", workers: int = 1,
                   launchers: tuple[str, ...] | None = None) -> dict[str, Any]:
    """For each trial launcher (`sweep.trial_launcher`; default both with one worker, ray-train alone with more), one
    after the other in one Ray instance, run a real sweep (`sweep.run_sweep`, ``workers`` workers per trial; in-trial
    takes one) of ``trials`` tiny trials and split each trial's wall time, from MLflow's timestamps, into:

    - ``gap_s``: previous trial's end (or the sweep's start) to this trial's MLflow run start: Tune starting (or
      reusing) the trial's process, imports, validation, creating the MLflow run;
    - ``to_first_step_s``: run start to the first logged training window, less the steps in it: Ray Train's
      controller and worker group (ray-train only), loaders (DALI pipeline builds), the model;
    - ``steps_s``: the training steps (``iterations`` x batch / images/s);
    - ``evaluation_s``: validation, checkpoint and the test pass;
    - ``model_logging_s``: logging the model to MLflow (torch.export);
    - ``end_s``: the last metric to the run's end (worker group shutdown, run status).

    ``overhead_s`` is everything but steps and evaluation. Ray's own start (``ray.init``) is timed once, apart; each
    sweep's set-up (parent run, summary) is reported as ``sweep_fixed_s``.
    """
    import ray

    from resnet_pipeline.config import ConfigError
    from resnet_pipeline.training.driver import check_data_dir
    from resnet_pipeline.training.ray_launch import check_local_capacity, init_ray

    data = check_data_dir(data_dir)
    # Checked here, before Ray starts; each sweep gets its own storage folder (`_overhead_sweep`).
    train = TrainConfig(iterations=iterations, batch_size=batch_size, milestones=[iterations * 10],
                        log_every=iterations, eval_every=iterations, checkpoint_every=iterations,
                        workers=workers, precision="fp32", experiment="bench-overhead")
    train.validate()
    launchers = launchers or (("in-trial", "ray-train") if workers == 1 else ("ray-train",))
    if workers > 1 and "in-trial" in launchers:
        raise ConfigError(f"workers={workers}: the in-trial launcher trains one worker per trial; give workers=1, "
                          f"or time the ray-train launcher alone")
    check_local_capacity(workers, "off")
    if ray.is_initialized():
        raise RuntimeError("bench overhead times Ray's start: run it in a process where Ray is not running yet")
    with _stopping_ray_it_starts():
        start = time.time()
        init_ray(workers=workers)
        ray_start = time.time() - start
        sweeps = [_overhead_sweep(data, launcher, trials, train, depth, backend) for launcher in launchers]

    return {"trials": trials, "iterations": iterations, "batch_size": batch_size, "depth": depth, "backend": backend,
            "workers": workers, "data_dir": str(data), "ray_start_s": ray_start, "sweeps": sweeps,
            "machine": machine_info()}


def _overhead_sweep(data: Path, launcher: str, trials: int, train: TrainConfig, depth: int,
                    backend: str) -> dict[str, Any]:
    from resnet_pipeline import tracking
    from resnet_pipeline.sweep import SweepConfig, run_sweep

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        sweep = SweepConfig(depths=[depth], shortcuts=["A"], seeds=trials, name=f"bench-overhead-{launcher}",
                            out=str(Path(tmp) / "metrics"), max_concurrent=1, trial_launcher=launcher)
        sweep_start = time.time()
        summary = run_sweep(sweep, dataclasses.replace(train, storage_path=str(Path(tmp) / "results")),
                            ModelConfig(depth=depth), data, backend=backend, num_threads=2, tracking_uri=uri)
        sweep_wall = time.time() - sweep_start
        runs = sorted((tracking.get_run(uri, t["run_id"]) for t in summary["trials"] if t["run_id"]),
                      key=lambda r: r.info.start_time)
        previous_end = sweep_start
        for run in runs:
            rid = run.info.run_id
            run_start, run_end = run.info.start_time / 1000, run.info.end_time / 1000
            first = min(tracking.metric_timestamps(uri, rid, "train_loss"))[1]
            test = max(tracking.metric_timestamps(uri, rid, "test_error"))[1]
            # The worker logs best_val_error once more after the model (`worker.run_worker`).
            final = max(t for _, t in tracking.metric_timestamps(uri, rid, "best_val_error") + [(0, test)])
            ips = tracking.metric_history(uri, rid, "images_per_s")[0][1]
            steps = train.iterations * train.batch_size / ips
            row = {"launcher": launcher, "run_name": run.info.run_name, "status": run.info.status,
                   "gap_s": run_start - previous_end, "to_first_step_s": first - run_start - steps,
                   "steps_s": steps, "evaluation_s": test - first, "model_logging_s": final - test,
                   "end_s": run_end - final, "wall_s": run_end - previous_end}
            row["overhead_s"] = row["wall_s"] - steps - row["evaluation_s"]
            rows.append(row)
            previous_end = run_end
        trial_time = sum(r["wall_s"] for r in rows)
    later = rows[1:] or rows  # the first trial also pays for Tune's start
    return {"launcher": launcher, "sweep_wall_s": sweep_wall, "sweep_fixed_s": sweep_wall - trial_time,
            "overhead_per_trial_s": statistics.median(r["overhead_s"] for r in later), "results": rows}
