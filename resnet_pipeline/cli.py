"""Command-line interface: a thin click layer. Parse, load config, call one library function.

Heavy libraries (torch, Ray, MLflow, DALI) are imported inside the commands so that `--help`
is instant and a bad flag fails before anything expensive starts.
"""

from __future__ import annotations

import json
import sys

import click

from resnet_pipeline.config import ConfigError


class _Group(click.Group):
    """Turn our ConfigError/ValueError into a one-line message and exit code 2, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproduce 'Deep Residual Learning for Image Recognition' (He et al. 2015)."""


@main.command()
@click.option("--family", type=click.Choice(["cifar", "imagenet"]), default=None,
              help="Only one model family (default: both).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(family: str | None, as_json: bool) -> None:
    """Parameter counts and multiply-adds of every depth x shortcut (x variant)."""
    from resnet_pipeline.models import zoo_table

    rows = zoo_table(family)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ResNet model zoo (computed from the modules)")
    for col in ("family", "depth", "shortcut", "variant", "input", "params", "mult-adds"):
        table.add_column(col, justify="right" if col in ("depth", "input", "params", "mult-adds") else "left")
    for r in rows:
        table.add_row(r["family"], str(r["depth"]), r["shortcut"], r.get("variant") or "-",
                      f"{r['input_size']}x{r['input_size']}", f"{r['params']:,}", f"{r['mult_adds'] / 1e9:.3f}G")
    Console().print(table)


@main.command()
@click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
              help="Params file (default: params.yaml); its `data` section gives the defaults.")
@click.option("--dataset", type=click.Choice(["cifar10", "imagefolder", "demo"]), default=None,
              help="Override data.dataset.")
@click.option("--source", default=None, help="Override data.source: a URL, an archive or a folder.")
@click.option("--out", default=None, help="Override data.out (default data/prepared/<dataset>).")
def prepare(params_file: str | None, dataset: str | None, source: str | None, out: str | None) -> None:
    """Acquire, validate and split a dataset into a folder the loaders read (the first DVC stage)."""
    from resnet_pipeline.data import load_data_config, prepare as run_prepare
    from resnet_pipeline.data.prepare import summary

    cfg = load_data_config(params_file, dataset=dataset, source=source, out=out)
    click.echo(summary(run_prepare(cfg), cfg.out_dir))


@main.group()
def bench() -> None:
    """Benchmarks (results belong in docs/benchmarks.md)."""


@bench.command("data")
@click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
              help="Params file (default: params.yaml); data.out, data.normalize, data.num_threads.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["dali-gpu", "dali-cpu", "torch"]),
              help="Backend to time; repeat for several (default: every one this machine has).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Timed seconds per backend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_data(params_file: str | None, data_dir: str | None, backends: tuple[str, ...], batch_size: int,
               seconds: float, as_json: bool) -> None:
    """Images/s of each data loader backend with the training augmentation, side by side."""
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.data.bench import bench_data as run_bench

    cfg = load_data_config(params_file)
    report = run_bench(data_dir or cfg.out_dir, backends=list(backends) or None, batch_size=batch_size,
                       num_threads=cfg.num_threads, normalize=cfg.normalize, seconds=seconds)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    machine = report["machine"]
    table = Table(title=f"Data loaders, training augmentation, {report['data_dir']} ({machine['cpu']}, "
                        f"{machine['cores']} cores, GPU: {machine['gpu'] or 'none'})")
    for col in ("backend", "images/s", "vs torch", "threads/workers", "batch"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    torch_rate = {r["backend"]: r["images_per_s"] for r in report["results"]}.get("torch")
    for r in report["results"]:
        ratio = f"{r['images_per_s'] / torch_rate:.1f}x" if torch_rate else "-"
        table.add_row(r["backend"], f"{r['images_per_s']:,.0f}", ratio, str(r["num_threads"]), str(r["batch_size"]))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
