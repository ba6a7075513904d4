"""What the CLI prints: rich tables of result rows, cell formats, the parsing of list options, and the
``--params`` option. Shared by `resnet_pipeline.cli` and the benchmarks' commands (`resnet_pipeline.bench.cli`)."""

from __future__ import annotations

import contextlib
import sys

import click


def params_option(help: str):
    """``--params FILE`` (default: params.yaml), with the help saying which of its keys the command reads."""
    return click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None, help=help)


def int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 20,32,44", param_hint=flag)


def str_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def json_only_on_stdout(as_json: bool):
    """With --json, stdout carries the JSON only: what the runs print (progress, Ray's worker logs) goes to
    stderr meanwhile."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def print_rows(title: str, rows: list[dict], columns: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        # fold, not ellipsis: a cell too wide for the console wraps instead of losing its end ("FINI…")
        table.add_column(c, justify="left" if c in ("shortcut", "status", "backend", "mode", "decoder") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(*(fmt_cell(c, r.get(c)) for c in columns))
    console().print(table)


def console():
    """Rich's console; under DVC, in a log or a pipe (no terminal) rich assumes 80 columns and cuts
    tables to them, so there it gets room for the table's natural width."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


COUNTS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def duration(seconds: float) -> str:
    """2.4 h, 38 min, 45 s."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def fmt_cell(column: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and ("error" in column or column.endswith("_fraction")):
        return f"{v:.1%}"
    if isinstance(v, float) and column.startswith("vs_"):
        return f"{v:.2f}x"
    if column in ("params", "mult_adds", "train_mult_adds"):
        v = float(v)
        scale, unit = next(((s, u) for s, u in COUNTS if abs(v) >= s), (1, ""))  # 270k, 1.7M, 4.1G
        return f"{v / scale:.3g}{unit}"
    if column.endswith("_s") and isinstance(v, (int, float)) and column not in ("images_per_s", "images_per_cpu_s"):
        return duration(float(v))
    if isinstance(v, float):
        return f"{v:,.1f}"
    return str(v)
