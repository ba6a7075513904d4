"""The paper's learning-rate schedule: step decay at fixed iterations (CIFAR) or on a validation
plateau (ImageNet), with the ResNet-110 warm-up."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence

import torch


class PaperSchedule:
    """lr(t) = peak * decay^(milestones passed by t + plateaus seen), preceded by an optional warm-up.

    Section 4.2: "For ResNet-110 we use 0.01 to warm up the training until the training error is below 80% (about 400
    iterations), and then go back to 0.1." The warm-up ends at the first logging window whose training error is below
    ``warmup_until_error``, or after ``warmup_max_iterations``, whichever comes first.

    Section 3.4: "The learning rate starts from 0.1 and is divided by 10 when the error plateaus." With
    ``plateau_patience`` > 0, every ``plateau_patience`` validations in a row without a new best validation error (lower
    by at least ``plateau_threshold``) add one decay. Warm-up and plateau state are saved in checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, milestones: Sequence[int],
                 decay: float = 0.1, warmup: bool = False, warmup_lr: float = 0.01,
                 warmup_until_error: float = 0.8, warmup_max_iterations: int = 400,
                 plateau_patience: int = 0, plateau_threshold: float = 0.001) -> None:
        self.optimizer = optimizer
        self.peak_lr, self.milestones, self.decay = peak_lr, list(milestones), decay
        self.warmup_lr, self.warmup_until_error = warmup_lr, warmup_until_error
        self.warmup_max_iterations = warmup_max_iterations
        self.warming_up = warmup
        self.plateau_patience, self.plateau_threshold = plateau_patience, plateau_threshold
        self.plateaus, self.best_val, self.stale = 0, float("inf"), 0

    def lr_at(self, iteration: int) -> float:
        if self.warming_up and iteration < self.warmup_max_iterations:
            return self.warmup_lr
        return self.peak_lr * self.decay ** (bisect_right(self.milestones, iteration) + self.plateaus)

    def step(self, iteration: int) -> float:
        """Set the optimizer's lr for ``iteration`` (0-based) and return it."""
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe_train_error(self, train_error: float) -> None:
        """Called once per logging window: end the warm-up once training error is low enough."""
        if self.warming_up and train_error < self.warmup_until_error:
            self.warming_up = False

    def observe_val_error(self, val_error: float) -> None:
        """Called after each validation (the same value on every rank): count plateaus."""
        if not self.plateau_patience:
            return
        if val_error < self.best_val - self.plateau_threshold:
            self.best_val, self.stale = val_error, 0
            return
        self.stale += 1
        if self.stale >= self.plateau_patience:
            self.plateaus, self.stale = self.plateaus + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"warming_up": self.warming_up, "plateaus": self.plateaus, "best_val": self.best_val,
                "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warming_up = bool(state["warming_up"])
        self.plateaus = int(state.get("plateaus", 0))
        self.best_val, self.stale = float(state.get("best_val", float("inf"))), int(state.get("stale", 0))
