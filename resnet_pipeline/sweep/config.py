"""The sweep's settings (the `sweep` section of params.yaml) and its unit, one trial."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Literal

from resnet_pipeline.config import ConfigError, check_name
from resnet_pipeline.models import SHORTCUTS, ModelConfig, infer_family, trial_name

TRIAL_LAUNCHERS = ("auto", "in-trial", "ray-train")


@dataclass
class SweepConfig:
    """The `sweep` section of params.yaml."""

    depths: list[int] = field(default_factory=lambda: [20, 32, 44, 56, 110])
    shortcuts: list[str] = field(default_factory=lambda: ["plain", "A"])
    # Nets beyond the grid, as "<shortcut>-<depth>" (e.g. the ImageNet Table 3 rows "B-50", "C-34").
    include: list[str] = field(default_factory=list)
    seeds: int = 1  # trials use seeds train.seed .. train.seed + seeds - 1
    name: str = "cifar10-table6"
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs (or GPUs) allow
    asha: bool = False  # ASHA early stopping on validation error
    out: str = "metrics/sweep"  # summary.json and summary.csv (a DVC metrics output)
    # in-trial: the Tune trial's process trains (one worker; Tune retries a failed trial, which resumes
    # from its checkpoints); ray-train: a Ray Train worker group per trial (restarts failed workers);
    # auto: in-trial for train.workers 1, else ray-train.
    trial_launcher: str = "auto"
    # GPUs per one-worker (in-trial) trial: a fraction packs several trials on one GPU. auto: 0.25 for
    # the CIFAR nets (a ResNet-110 at batch 128 uses a small part of a modern GPU), 1 for ImageNet's.
    # Trials of several workers take one GPU per worker.
    gpus_per_trial: float | Literal["auto"] = "auto"

    def validate(self) -> None:
        self.included()  # raises on a malformed entry
        try:
            infer_family(self.all_depths)
        except ValueError as exc:
            raise ConfigError(f"sweep.depths: {exc}") from None
        if not self.shortcuts:
            raise ConfigError(f"sweep.shortcuts: empty; choose from {', '.join(SHORTCUTS)}")
        if bad := [s for s in self.shortcuts if s not in SHORTCUTS]:
            raise ConfigError(f"sweep.shortcuts: unknown {', '.join(map(repr, bad))}; valid are {', '.join(SHORTCUTS)}")
        if self.seeds < 1:
            raise ConfigError(f"sweep.seeds: must be >= 1, got {self.seeds}")
        if self.max_concurrent < 0:
            raise ConfigError(f"sweep.max_concurrent: must be >= 0 (0: automatic), got {self.max_concurrent}")
        check_name("sweep.name", self.name, "cifar-plain-vs-resnet")
        if self.gpus_per_trial != "auto" and not 0 < self.gpus_per_trial <= 1:
            raise ConfigError(f"sweep.gpus_per_trial: must be in (0, 1] (a fraction of one GPU) or auto, "
                              f"got {self.gpus_per_trial}")
        if self.trial_launcher not in TRIAL_LAUNCHERS:
            raise ConfigError(f"sweep.trial_launcher: {self.trial_launcher!r} is not valid; use one of "
                              f"{', '.join(TRIAL_LAUNCHERS)}")

    def in_trial(self, workers: int) -> bool:
        """Whether each trial trains in its own Tune process (no Ray Train worker group)."""
        if self.trial_launcher == "in-trial" and workers != 1:
            raise ConfigError(f"sweep.trial_launcher: in-trial runs one worker per trial, but train.workers is "
                              f"{workers}; use auto or ray-train")
        return self.trial_launcher == "in-trial" or (self.trial_launcher == "auto" and workers == 1)

    def gpu_fraction(self) -> float:
        """The GPUs of one in-trial trial (`gpus_per_trial`, auto resolved by the nets' family)."""
        if self.gpus_per_trial != "auto":
            return float(self.gpus_per_trial)
        return 0.25 if self.family == "cifar" else 1.0

    @property
    def all_depths(self) -> list[int]:
        return list(dict.fromkeys([*self.depths, *(d for _, d in self.included())]))

    @property
    def family(self) -> str:
        return infer_family(self.all_depths)

    def included(self) -> list[tuple[str, int]]:
        """``include`` as (shortcut, depth) pairs."""
        pairs = []
        for entry in self.include:
            shortcut, _, depth = str(entry).rpartition("-")
            if shortcut not in SHORTCUTS or not depth.isdigit():
                raise ConfigError(f"sweep.include: {entry!r} is not valid; use '<shortcut>-<depth>' with a shortcut "
                                  f"from {', '.join(SHORTCUTS)}, e.g. 'B-50'")
            pairs.append((shortcut, int(depth)))
        return pairs

    def nets(self) -> list[tuple[int, str]]:
        """(depth, shortcut) of every net: the grid, then ``include``, without repeats."""
        return list(dict.fromkeys([*itertools.product(self.depths, self.shortcuts),
                                   *((d, s) for s, d in self.included())]))


@dataclass(frozen=True)
class Trial:
    depth: int
    shortcut: str
    seed: int
    family: str

    def run_name(self) -> str:
        """``resnet56-A-s0``, ``plain20-s1``: unique under the sweep's parent run, where the sweep's name
        and configuration digest are (tags); the checkpoints go under ``<storage>/<sweep>-<digest>/``."""
        return trial_name(self.depth, self.shortcut, self.seed)


def trial_model(base: ModelConfig, trial: Trial) -> ModelConfig:
    return dataclasses.replace(base, depth=trial.depth, shortcut=trial.shortcut, family=trial.family)
