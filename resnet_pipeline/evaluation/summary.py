"""The evaluation's summary: what `evaluate` writes to <evaluate.details>/summary.json and what the CLI's table, the
report and the DVC metrics file read. ``to_json`` gives the file's content, key for key; ``from_json`` reads it back.

Runs, table entries and skipped runs stay mappings: a run's passes are keyed by split name (``val``, ``test``,
``test_10crop``), and the table's paper columns by metric."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class LayerResponses:
    """Figure 7 in numbers: a net's seed-mean layer stds, averaged over its 3x3 layers."""

    shortcut: str
    depth: int
    layers: int
    mean_std: float
    max_std: float


@dataclass
class RegistryState:
    """The registered model's champion after the whole evaluation, not at each registration."""

    name: str
    alias: str
    champion_version: str | None
    champion_run_id: str | None


@dataclass
class FigureFiles:
    """Names inside ``plots_dir``."""

    figure6: str = "figure6.png"
    figure7: str = "figure7.png"
    figure6_data: str = "figure6.csv"
    figure7_data: str = "figure7.csv"


@dataclass
class EvaluationSummary:
    units: str
    sweep: str | None
    parent_run_id: str | None
    experiment: str
    experiment_id: str
    tracking_uri: str
    dataset: str
    data_dir: str
    kind: str
    families: list[str]
    split: str
    compared: str  # the pass beside the paper's: ``split``, or ``<split>_10crop``
    paper_protocol: dict[str, str]
    runs: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    paper_benchmark: str | None
    table: list[dict[str, Any]]  # `compare.comparison_table`
    degradation: list[dict[str, Any]]  # `DegradationCheck`s as dicts
    layer_responses: list[LayerResponses]
    registry: RegistryState
    plots_dir: str
    plots: FigureFiles
    details_dir: str
    config: dict[str, Any]  # the resolved EvaluateConfig
    environment: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationSummary:
        return cls(**{**data, "layer_responses": [LayerResponses(**r) for r in data["layer_responses"]],
                      "registry": RegistryState(**data["registry"]), "plots": FigureFiles(**data["plots"])})
