"""The degradation check: the paper's central finding, computed from the training curves.

Sec. 4.1/4.2 and Figure 6: with BN and He initialisation, a deeper *plain* net reaches a *higher training error*
than a shallower one (so it is an optimisation difficulty, not overfitting), while residual nets of the same depths
do not. The check, pure Python on plain data structures, asks exactly that of a set of runs:

1. Each run's training error is measured one of two ways (``basis``), then averaged (mean and std) over seeds per
   (shortcut, depth):
   - ``final``: the mean of its last ``last_windows`` logging windows (one window's error is noisy);
   - ``second_half``: the mean over the logging windows of the second half of the run, which compares the nets at
     equal iterations along the curve, as Figure 1 reads. On a short schedule the last windows alone can cross (a
     deeper net catching up just after an lr step), while the second half shows which curve lies above.
2. It compares plain nets with the residual nets of each residual shortcut at the depths where both exist. At
   least 2 such depths are needed, else the answer is "not enough runs".
3. Plain nets "rise with depth" when the deepest one's error exceeds the shallowest one's by more than ``margin``
   (a fraction: 0.01 = 1 percentage point). Residual nets "rise" when any of them exceeds a shallower one by more
   than the margin: a ResNet-44 worse than a ResNet-20 is no residual success because the ResNet-56 happens to be
   as good as the ResNet-20.
4. Degradation is reproduced when plain nets rise and residual nets do not.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

from resnet_pipeline.stats import mean_std

Verdict = Literal["degradation", "no degradation", "both degrade", "not enough runs"]
Basis = Literal["final", "second_half"]
BASES = ("final", "second_half")


@dataclass(frozen=True)
class RunCurve:
    """One training run's training-error curve: [(iteration, error as a fraction), ...]."""

    shortcut: str  # plain, A, B or C
    depth: int
    seed: int
    train_error: Sequence[tuple[int, float]]
    run_id: str | None = None


@dataclass
class DepthPoint:
    depth: int
    plain: float  # mean final training error over seeds (fraction)
    residual: float
    plain_std: float
    residual_std: float
    plain_seeds: int
    residual_seeds: int


@dataclass
class DegradationCheck:
    residual_shortcut: str | None
    verdict: Verdict
    answer: str  # one or two sentences with the numbers behind them
    depths: list[int] = field(default_factory=list)
    points: list[DepthPoint] = field(default_factory=list)
    plain_rise: float | None = None  # deepest minus shallowest (fraction)
    residual_rise: float | None = None
    # The largest rise from a shallower to a deeper residual net (what decides for residual nets),
    # and between which depths.
    residual_worst_rise: float | None = None
    residual_worst_depths: list[int] = field(default_factory=list)
    last_windows: int = 5
    margin: float = 0.01
    basis: Basis = "final"


def _finite(curve: Sequence[tuple[int, float]]) -> dict[int, float]:
    """{step: value} of the finite points: a step logged twice (a resumed run logs the windows between
    its checkpoint and the crash again) counts once, with its last value."""
    return {step: v for step, v in curve if v is not None and math.isfinite(v)}


def final_error(curve: Sequence[tuple[int, float]], last_windows: int) -> float | None:
    """Mean of the last ``last_windows`` finite points (by iteration), or None for an empty curve."""
    tail = [v for _, v in sorted(_finite(curve).items())[-last_windows:]]
    return statistics.fmean(tail) if tail else None


def second_half_error(curve: Sequence[tuple[int, float]]) -> float | None:
    """Mean of the finite points logged after the middle of the run (the last iteration / 2), or None."""
    points = _finite(curve)
    middle = max(points, default=0) / 2
    return statistics.fmean(v for step, v in points.items() if step > middle) if points else None


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def degradation_check(runs: Iterable[RunCurve], *, residual_shortcut: str | None = None, last_windows: int = 5,
                      margin: float = 0.01, basis: Basis = "final") -> DegradationCheck:
    """Does training error rise with depth among plain nets but not among residual nets?

    ``residual_shortcut``: which residual nets to compare with (A, B or C); None picks the one with the most depths
    in common with the plain nets (A first on a tie, the paper's choice)."""
    if last_windows < 1:
        raise ValueError(f"last_windows must be >= 1, got {last_windows}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be a fraction in [0, 1), got {margin}")
    if basis not in BASES:
        raise ValueError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    # {(shortcut, depth): [training error of each seed, measured by ``basis``]}, runs without a curve left out
    finals: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        e = final_error(r.train_error, last_windows) if basis == "final" else second_half_error(r.train_error)
        if e is not None:
            finals.setdefault((r.shortcut, r.depth), []).append(e)
    plain_depths = {d for s, d in finals if s == "plain"}
    if residual_shortcut is None:
        residual_shortcut = max(sorted({s for s, _ in finals if s != "plain"}), default=None,
                                key=lambda s: (len(plain_depths & {d for t, d in finals if t == s}), s == "A"))
    common = sorted(plain_depths & {d for s, d in finals if s == residual_shortcut}) if residual_shortcut else []
    base = dict(residual_shortcut=residual_shortcut, last_windows=last_windows, margin=margin, basis=basis)
    if len(common) < 2:
        have = (f"plain nets at depths {sorted(plain_depths) or 'none'}, residual ({residual_shortcut}) nets at "
                f"depths {sorted(d for s, d in finals if s == residual_shortcut) or 'none'}"
                if residual_shortcut else f"plain nets at depths {sorted(plain_depths) or 'none'}, no residual nets")
        return DegradationCheck(verdict="not enough runs", depths=common, answer=(
            f"Not enough runs to decide: the check needs at least 2 depths with both a plain and a residual "
            f"run; this evaluation has {have}."), **base)

    points = []
    for d in common:
        (pm, ps), (rm, rs) = mean_std(finals["plain", d]), mean_std(finals[residual_shortcut, d])
        points.append(DepthPoint(d, pm, rm, ps, rs, len(finals["plain", d]), len(finals[residual_shortcut, d])))
    plain_rise = points[-1].plain - points[0].plain
    residual_rise = points[-1].residual - points[0].residual
    worst, low, high = max((b.residual - a.residual, a, b) for i, a in enumerate(points) for b in points[i + 1:])
    plain_up, residual_up = plain_rise > margin, worst > margin
    shallow, deep = common[0], common[-1]
    measure = (f"Final training error (mean of the last {last_windows} logging windows" if basis == "final" else
               "Training error over the second half of the run (mean of its logging windows, at equal iterations")
    numbers = (f"{measure}, averaged over seeds): "
               f"plain-{shallow} {_pct(points[0].plain)} -> plain-{deep} {_pct(points[-1].plain)} "
               f"({100 * plain_rise:+.2f} points); ResNet-{shallow} ({residual_shortcut}) {_pct(points[0].residual)} "
               f"-> ResNet-{deep} {_pct(points[-1].residual)} ({100 * residual_rise:+.2f} points)"
               + (f", but ResNet-{low.depth} {_pct(low.residual)} -> ResNet-{high.depth} {_pct(high.residual)} "
                  f"({100 * worst:+.2f} points)" if residual_up and (low.depth, high.depth) != (shallow, deep) else "")
               + f"; margin {100 * margin:.2f} points.")
    verdict: Verdict = ("both degrade" if residual_up else "degradation") if plain_up else "no degradation"
    answer = {"degradation": "Yes: training error rises with depth among plain nets but not among residual nets, "
                             "as in Figure 6.",
              "both degrade": "No: training error rises with depth among plain nets, but also among residual nets "
                              "(unlike Figure 6).",
              "no degradation": "No: training error does not rise with depth among plain nets by more than the "
                                "margin (the paper's degradation is not reproduced by these runs)."}[verdict]
    return DegradationCheck(verdict=verdict, answer=f"{answer} {numbers}", depths=common, points=points,
                            plain_rise=plain_rise, residual_rise=residual_rise, residual_worst_rise=worst,
                            residual_worst_depths=[low.depth, high.depth], **base)


def degradation_checks(runs: Iterable[RunCurve], *, last_windows: int = 5, margin: float = 0.01,
                       basis: Basis = "final") -> list[DegradationCheck]:
    """One check per residual shortcut present (a single "not enough runs" check when none is)."""
    runs = list(runs)
    shortcuts = sorted({r.shortcut for r in runs if r.shortcut != "plain"}, key=lambda s: (s != "A", s))
    return [degradation_check(runs, residual_shortcut=s, last_windows=last_windows, margin=margin, basis=basis)
            for s in shortcuts or [None]]
