"""Mean and spread over seeds: one implementation for the sweep, the evaluation and the report."""

from __future__ import annotations

import math
import statistics
from typing import Iterable


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value) of the finite values; (None, None) when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
