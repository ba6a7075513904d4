"""The `evaluate` section of params.yaml (read by `evaluate`, `predict` and `report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from resnet_pipeline.config import Bounds, ConfigError, check_fields, check_name, load_section

# The alias that marks the registered version with the lowest validation error.
CHAMPION = "champion"
# In evaluate.details: the whole evaluation (what `report` renders).
SUMMARY = "summary.json"


@dataclass
class EvaluateConfig:
    # DVC metrics: per net the mean over seeds beside the paper's figure, and the degradation check.
    # Errors are fractions (0.0875 = 8.75%), as in MLflow.
    out: str = "metrics/evaluation.json"
    # summary.json (everything `report` renders) and one file per run: per-class accuracy, the
    # confusion matrix, the layer responses.
    details: str = "metrics/evaluation"
    # DVC plots data (CSV) and the PNG figures: Figures 6 and 7, learning curves, confusion matrices.
    plots: str = "plots/evaluation"
    # Reports are written to <reports>/<sweep name>/.
    reports: str = "reports"
    # The split whose error is reported beside the paper's. Validation error (the `val` split) is
    # always measured too: it, never the test error, decides the registry's champion.
    split: Literal["val", "test"] = "test"
    batch_size: Annotated[int, Bounds(gt=0)] = 256
    # ImageNet-kind data: also 10-crop testing (Sec. 3.4; Tables 2 and 3 use it). auto: on for
    # the ImageNet kind (CIFAR-kind images are tested on a single view, Sec. 4.2).
    ten_crop: Literal["auto", "on", "off"] = "auto"
    # Degradation check (Figure 6): a run's final training error is the mean of its last N
    # logging windows; a rise with depth counts only when larger than the margin (a fraction:
    # 0.01 = 1 percentage point), so noise between seeds is not called degradation.
    last_windows: Annotated[int, Bounds(gt=0)] = 5
    degradation_margin: Annotated[float, Bounds(ge=0, lt=1, what="a fraction of error")] = 0.01
    # What the degradation check compares: each run's final training error (its last `last_windows`
    # windows), or its mean over the second half of the run at equal iterations (short schedules,
    # where the last windows of two curves can cross).
    degradation_basis: Literal["final", "second_half"] = "final"
    # MLflow model registry: one registered model per dataset; null means resnet-<dataset>.
    register: bool = True
    registry_name: str | None = None

    def validate(self) -> None:
        check_fields(self, "evaluate")
        for key in ("out", "details", "plots", "reports"):
            if not getattr(self, key):
                raise ConfigError(f"evaluate.{key}: must be a non-empty path")
        if not self.out.endswith(".json"):
            raise ConfigError(f"evaluate.out: {self.out!r} must be a .json file (a DVC metrics file)")
        if self.registry_name is not None:
            check_name("evaluate.registry_name", self.registry_name,
                       "resnet-cifar10, or null for resnet-<data folder name>")

    def resolved_registry_name(self, data_dir: str | Path) -> str:
        """``registry_name``, else ``resnet-<the prepared data folder's name>`` (resnet-cifar10 for
        data/prepared/cifar10): one registered model, and one champion, per dataset."""
        return self.registry_name or f"resnet-{Path(data_dir).resolve().name}"


def load_evaluate_config(params=None, **overrides) -> EvaluateConfig:
    """Read params' `evaluate` section (unknown keys are errors) and apply non-None overrides."""
    return load_section(EvaluateConfig, "evaluate", params, **overrides)
