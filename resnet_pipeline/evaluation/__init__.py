"""Evaluation: test errors (top-1/top-5, 10-crop), per-class accuracy and confusion matrices, the paper comparison,
the degradation check, Figure 7's layer responses, the model registry, predict.

Importing this package imports neither torch, MLflow nor matplotlib: the modules that need them (`metrics`,
`responses`, `evaluate`, `predict`, `registry`) are imported by name, where they are used."""

from resnet_pipeline.evaluation.compare import comparison_table, mean_std
from resnet_pipeline.evaluation.config import CHAMPION, EvaluateConfig, load_evaluate_config
from resnet_pipeline.evaluation.degradation import (DegradationCheck, RunCurve, degradation_check,
                                                    degradation_checks, final_error)

__all__ = ["CHAMPION", "DegradationCheck", "EvaluateConfig", "RunCurve", "comparison_table", "degradation_check",
           "degradation_checks", "final_error", "load_evaluate_config", "mean_std"]
