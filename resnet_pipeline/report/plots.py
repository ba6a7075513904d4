"""PNG figures: Figure 6 and Figure 7 of the paper from our runs, learning curves, confusion matrices.

matplotlib's object-oriented API with the Agg canvas: no pyplot global state, no display needed. Inputs are plain
lists; errors are fractions and are drawn in percent, as the paper's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from resnet_pipeline.models import net_label

Curve = Sequence[tuple[int, float]]


def _figure(width: float, height: float, *grid: int, **subplots: Any):
    """(figure, its axes: `Figure.subplots` of ``grid`` and ``subplots``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **subplots)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _depth_colours(depths: Sequence[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    ordered = sorted(set(depths))
    return {d: colormaps["viridis"](0.85 * i / max(1, len(ordered) - 1)) for i, d in enumerate(ordered)}


def _xy(curve: Curve) -> tuple[list[int], list[float]]:
    points = sorted(curve)
    return [s for s, _ in points], [100 * v for _, v in points]


def figure6(series: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training error (dashed) and validation error (bold) vs iterations: plain nets in the left panel, residual nets
    (one panel per shortcut) on the right, one colour per depth (Figure 6).

    ``series``: [{"shortcut", "depth", "train": [(iteration, error)], "val": [(iteration, error)]}]."""
    shortcuts = ["plain"] + sorted({s["shortcut"] for s in series if s["shortcut"] != "plain"})
    colours = _depth_colours([s["depth"] for s in series])
    fig, axes = _figure(5.0 * len(shortcuts), 4.0, 1, len(shortcuts), sharey=True, squeeze=False)
    axes = axes[0]
    top = 0.0
    for ax, shortcut in zip(axes, shortcuts):
        panel = sorted((s for s in series if s["shortcut"] == shortcut), key=lambda s: s["depth"])
        for s in panel:
            for key, style, width, label in (("train", "--", 1.0, None),
                                             ("val", "-", 2.2, net_label(s["depth"], shortcut, "legend"))):
                if s.get(key):
                    x, y = _xy(s[key])
                    ax.plot(x, y, style, color=colours[s["depth"]], linewidth=width, label=label)
                    top = max(top, max(y))
        if not panel:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("plain networks" if shortcut == "plain" else f"ResNets (option {shortcut})")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        if panel:
            ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.05) if top > 0 else 1.0)
    fig.suptitle(title or "Figure 6: training error (dashed) and validation error (bold)", fontsize=10)
    return _save(fig, path)


def figure7(series: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Std of each 3x3 layer's response (after BN, before addition/ReLU): top in the network's order, bottom sorted
    in descending order (Figure 7). Plain nets dashed, ResNets solid.

    ``series``: [{"shortcut", "depth", "stds": [float, ...]}]."""
    colours = _depth_colours([s["depth"] for s in series])
    fig, (ax_order, ax_sorted) = _figure(7.0, 6.0, 2, 1)
    for s in sorted(series, key=lambda s: (s["shortcut"] != "plain", s["depth"])):
        style = "--" if s["shortcut"] == "plain" else "-"
        label = net_label(s["depth"], s["shortcut"], "legend")
        x = range(1, len(s["stds"]) + 1)
        for ax, stds in ((ax_order, s["stds"]), (ax_sorted, sorted(s["stds"], reverse=True))):
            ax.plot(x, stds, style, color=colours[s["depth"]], linewidth=1.3, label=label)
    for ax, order in ((ax_order, "original order"), (ax_sorted, "sorted by magnitude")):
        ax.set_xlabel(f"layer index ({order})")
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    if series:
        ax_order.legend(fontsize=8, ncol=2)
    fig.suptitle(title or "Figure 7: std of the 3x3 layers' responses", fontsize=10)
    return _save(fig, path)


def learning_curves(train: Curve, val: Curve, path: str | Path, title: str,
                    test_error: float | None = None) -> Path:
    """One run: training error (dashed) and validation error (bold); the final test error as a point."""
    fig, ax = _figure(6.0, 4.0)
    if train:
        ax.plot(*_xy(train), "--", color="tab:blue", linewidth=1.0, label="training error")
    if val:
        ax.plot(*_xy(val), "-", color="tab:orange", linewidth=2.2, label="validation error")
    if test_error is not None and (train or val):
        last = max(s for s, _ in list(train) + list(val))
        ax.plot([last], [100 * test_error], "o", color="tab:red", label=f"test error {100 * test_error:.2f}%")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix (row: true class, column: predicted); counts written in the
    cells for up to 12 classes, class names on the axes for up to 30."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    n = len(classes)
    side = min(12.0, max(4.0, 0.45 * n + 2.0))
    fig, ax = _figure(side + 1.0, side)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(classes), fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
