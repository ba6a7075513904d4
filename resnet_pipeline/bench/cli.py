"""`python cli.py bench ...`: the benchmarks' commands (registered on the main CLI, `resnet_pipeline.cli`).
Each parses its options, runs one function of `resnet_pipeline.bench`, and prints a table or JSON."""

from __future__ import annotations

import json

import click

from resnet_pipeline.console import console, int_list, json_only_on_stdout, params_option, print_rows


def loader_bench_options(f):
    """--params, --data and --backend of the loader benchmarks."""
    f = click.option("--backend", "backends", multiple=True, type=click.Choice(["dali-gpu", "dali-cpu", "torch"]),
                     help="Backend to time; repeat for several (default: every one this machine has).")(f)
    f = click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")(f)
    return params_option("Params file (default: params.yaml); data.out, data.normalize, data.num_threads.")(f)


def _show(report: dict, as_json: bool, table) -> None:
    """The report as JSON (--json), else as ``table(report)`` prints it."""
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        table(report)


@click.group()
def bench() -> None:
    """Benchmarks (results belong in docs/benchmarks.md)."""


@bench.command("data")
@loader_bench_options
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Timed seconds per backend and round.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds; the median is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_data(params_file: str | None, data_dir: str | None, backends: tuple[str, ...], batch_size: int,
               seconds: float, rounds: int, as_json: bool) -> None:
    """Images/s of each data loader backend with the training augmentation, side by side."""
    from resnet_pipeline.bench.data import bench_data as run_bench, bench_decoders
    from resnet_pipeline.data import load_data_config

    cfg = load_data_config(params_file)
    report = run_bench(data_dir or cfg.out_dir, backends=list(backends) or None, batch_size=batch_size,
                       num_threads=cfg.num_threads, normalize=cfg.normalize, seconds=seconds, rounds=rounds)
    report["decoders"] = bench_decoders(data_dir or cfg.out_dir, rounds=rounds)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    machine = report["machine"]
    table = Table(title=f"Training augmentation on {report['data_dir']}, batch {batch_size}\n"
                        f"{machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}")
    for col in ("backend", "threads", "images/s", "vs torch", "each round", "images/CPU-s"):
        table.add_column(col, justify="left" if col in ("backend", "threads") else "right")
    torch_rate = {r["backend"]: r["images_per_s"] for r in report["results"]}.get("torch")
    for r in report["results"]:
        ratio = f"{r['images_per_s'] / torch_rate:.1f}x" if torch_rate else "-"
        table.add_row(r["backend"], r["layout"], f"{r['images_per_s']:,.0f}", ratio,
                      " ".join(f"{x:,.0f}" for x in r["rounds_images_per_s"]), f"{r['images_per_cpu_s']:,.0f}")
    console().print(table)
    print_rows("Decoding alone, one thread (the torch backend uses TorchCodec)", report["decoders"],
               ("decoder", "files", "images_per_s", "same_pixels"))


@bench.command("resume")
@loader_bench_options
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--position", type=click.FloatRange(min=0, max=1, min_open=True), default=0.75, show_default=True,
              help="Where in the epoch the checkpoint is (a fraction).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_resume(params_file: str | None, data_dir: str | None, backends: tuple[str, ...], batch_size: int,
                 position: float, as_json: bool) -> None:
    """A restart's cost to the training loader: building it, and reaching a checkpointed batch from its
    saved state against decoding every batch before it."""
    from resnet_pipeline.bench.data import bench_resume as run_bench
    from resnet_pipeline.data import load_data_config

    cfg = load_data_config(params_file)
    report = run_bench(data_dir or cfg.out_dir, backends=list(backends) or None, batch_size=batch_size,
                       num_threads=cfg.num_threads, normalize=cfg.normalize, position=position)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    print_rows(f"Resuming the training loader on {report['data_dir']}, batch {batch_size} "
               f"({report['machine']['cpu']}, {report['machine']['cores']} cores)", report["results"],
               ("backend", "batches_per_epoch", "position", "build_s", "restore_s", "replay_s", "replay_vs_restore"))


@bench.command("train")
@params_option("Params file (default: params.yaml): data.out is the default dataset.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--depth", type=int, default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=60, show_default=True, help="Per mode.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="Repeat for several (default: fp32); the first runs every mode, the others bare only.")
@click.option("--memory-format", "memory_formats", multiple=True, type=click.Choice(["channels_last", "nchw"]),
              help="Repeat for several (default: channels_last); the first runs every mode, the others bare only.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["bare", "ray-1", "ray-2"]),
              help="Repeat for several (default: all three).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the modes this many times, every other round in reverse order; a summary gives the medians.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_train(params_file: str | None, data_dir: str | None, depth: int, batch_size: int, iterations: int,
                precisions: tuple[str, ...], memory_formats: tuple[str, ...], modes: tuple[str, ...], rounds: int,
                as_json: bool) -> None:
    """Images/s of the Ray Train path (1 and 2 workers) vs the bare single-process loop, and of the bare
    loop in fp32/bf16 and channels_last/NCHW, side by side."""
    from resnet_pipeline.bench.train import bench_train as run_bench
    from resnet_pipeline.data import load_data_config

    cfg = load_data_config(params_file)
    with json_only_on_stdout(as_json):
        report = run_bench(data_dir or cfg.out_dir, depth=depth, batch_size=batch_size, iterations=iterations,
                           precisions=precisions or ("fp32",), memory_formats=memory_formats or ("channels_last",),
                           modes=modes or ("bare", "ray-1", "ray-2"), rounds=rounds)
    _show(report, as_json, _print_bench_train)


def _print_bench_train(report: dict) -> None:
    print_rows(f"Training throughput, ResNet-{report['depth']}, batch {report['batch_size']}, "
               f"{report['iterations']} iterations ({report['machine']['cpu']}, {report['machine']['cores']} cores)",
               report["results"], ("round", "mode", "precision", "memory_format", "images_per_s", "vs_bare",
                                   "data_wait_fraction", "wall_s", "overhead_s"))
    if report["rounds"] > 1:
        print_rows(f"Median of {report['rounds']} rounds (vs_bare: the median ratio to the same round's bare loop)",
                   report["summary"], ("mode", "rounds", "images_per_s", "vs_bare", "vs_bare_min", "vs_bare_max",
                                       "data_wait_fraction"))


@bench.command("depths")
@click.option("--cifar-depths", default="20,32,44,56,110", show_default=True)
@click.option("--imagenet-depths", default="18,34,50", show_default=True)
@click.option("--imagenet-input", type=click.IntRange(min=1), default=64, show_default=True,
              help="Side of the ImageNet nets' input.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Timed seconds per net and round.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rounds; the median is reported.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="Repeat for several (default: fp32): every net at each, taking turns; vs_first compares each with "
                   "the first precision and graph.")
@click.option("--graph", "graphs", multiple=True, type=click.Choice(["eager", "compiled"]),
              help="Repeat for several (default: eager). compiled: the net in torch.compile, as train.compile "
                   "runs it (first_step_s includes the compilation).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_depths(cifar_depths: str, imagenet_depths: str, imagenet_input: int, batch_size: int, seconds: float,
                 rounds: int, precisions: tuple[str, ...], graphs: tuple[str, ...], as_json: bool) -> None:
    """Images/s and effective GFLOP/s of bare training steps for each depth, precision and graph mode
    (synthetic data)."""
    from resnet_pipeline.bench.train import bench_depths as run_bench
    from resnet_pipeline.models import ModelConfig

    depths = {}
    for family, value in (("cifar", cifar_depths), ("imagenet", imagenet_depths)):
        flag = f"--{family}-depths"
        depths[family] = tuple(int_list(value, flag))
        for depth in depths[family]:
            try:
                ModelConfig(depth=depth, family=family).validate()
            except ValueError as exc:
                raise click.BadParameter(str(exc).removeprefix("model.depth: "), param_hint=flag) from None
    report = run_bench(cifar_depths=depths["cifar"], imagenet_depths=depths["imagenet"],
                       imagenet_input=imagenet_input, batch_size=batch_size, seconds=seconds, rounds=rounds,
                       precisions=precisions or ("fp32",), graphs=graphs or ("eager",))
    _show(report, as_json, _print_bench_depths)


def _print_bench_depths(report: dict) -> None:
    print_rows(f"Training steps per depth, batch {report['batch_size']}, {', '.join(report['precisions'])}, "
               f"{', '.join(report['graphs'])}, {report['memory_format']}; "
               f"fp32 peak {report['peak']['gflops']:.0f} GFLOP/s = {report['peak']['formula']}",
               report["results"], ("family", "depth", "input_size",
                                    *(["precision"] if len(report["precisions"]) > 1 else []),
                                    *(["graph"] if len(report["graphs"]) > 1 else []), "mult_adds", "images_per_s",
                                    *(["vs_first"] if len(report["precisions"]) + len(report["graphs"]) > 2 else []),
                                    "gflops", "peak_fraction", "gflops_per_cpu_s", "core_peak_fraction",
                                    *(["first_step_s"] if "compiled" in report["graphs"] else [])))


@bench.command("overhead")
@params_option("Params file (default: params.yaml): data.out is the default dataset.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--trials", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=1, show_default=True, help="Per trial.")
@click.option("--launcher", "launchers", multiple=True, type=click.Choice(["in-trial", "ray-train"]),
              help="Trial launcher(s) to time, one sweep each, in one Ray instance (default: both; ray-train alone "
                   "with --workers above 1).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training workers per trial (the in-trial launcher takes 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_overhead(params_file: str | None, data_dir: str | None, trials: int, iterations: int,
                   launchers: tuple[str, ...], workers: int, as_json: bool) -> None:
    """Per-trial overhead of a sweep: real sweeps of tiny trials, each trial's time split up."""
    from resnet_pipeline.bench.train import bench_overhead as run_bench
    from resnet_pipeline.data import load_data_config

    with json_only_on_stdout(as_json):
        report = run_bench(data_dir or load_data_config(params_file).out_dir, trials=trials, iterations=iterations,
                           workers=workers, launchers=launchers or None)
    _show(report, as_json, _print_bench_overhead)


def _print_bench_overhead(report: dict) -> None:
    click.echo(f"ray.init {report['ray_start_s']:.1f} s")
    for sweep in report["sweeps"]:
        print_rows(f"Sweep of {report['trials']} trials x {report['iterations']} iteration(s) x "
                   f"{report['workers']} worker(s), trial launcher "
                   f"{sweep['launcher']}: sweep set-up and summary {sweep['sweep_fixed_s']:.1f} s, overhead per "
                   f"trial {sweep['overhead_per_trial_s']:.1f} s (median after the first)",
                   sweep["results"], ("run_name", "gap_s", "to_first_step_s", "steps_s", "evaluation_s",
                                       "model_logging_s", "end_s", "wall_s", "overhead_s"))


@bench.command("all")
@params_option("Params file (default: params.yaml); data.out, data.normalize, data.num_threads.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def bench_all(params_file: str | None, data_dir: str | None, as_json: bool) -> None:
    """`bench data`, `bench train` (fp32/bf16 x channels_last/NCHW) and `bench depths` with their defaults."""
    from resnet_pipeline.bench.data import bench_data as run_data
    from resnet_pipeline.bench.train import bench_depths as run_depths, bench_train as run_train
    from resnet_pipeline.data import load_data_config

    cfg = load_data_config(params_file)
    data = data_dir or cfg.out_dir
    with json_only_on_stdout(as_json):
        report = {"data": run_data(data, num_threads=cfg.num_threads, normalize=cfg.normalize),
                  "train": run_train(data, precisions=("fp32", "bf16"), memory_formats=("channels_last", "nchw")),
                  "depths": run_depths()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    print_rows("Data loaders, training augmentation", report["data"]["results"],
               ("backend", "images_per_s", "images_per_cpu_s"))
    _print_bench_train(report["train"])
    _print_bench_depths(report["depths"])
