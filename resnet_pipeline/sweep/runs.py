"""The sweep's MLflow runs: one parent per sweep and settings, one child per trial, found again by name.

A re-run reopens the parent with the same configuration digest, skips the trials whose child runs are
done and runs the others, which resume from their checkpoints. After Tune, and when the sweep is
interrupted, no child run is left RUNNING.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from resnet_pipeline import tracking
from resnet_pipeline.models import ModelConfig
from resnet_pipeline.storage import display
from resnet_pipeline.sweep.config import SweepConfig, Trial
from resnet_pipeline.training.config import TrainConfig

# The tag of a trial's run that ASHA stopped before the end (the run is KILLED).
STOPPED_EARLY = "stopped_early"


def parent_params(snapshot: dict[str, Any] | None, sweep: SweepConfig, model_cfg: ModelConfig,
                  train: TrainConfig) -> dict[str, Any]:
    """The parent's params: what all trials share. Each trial sets its own depth, shortcut and family."""
    snap = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in (snapshot or {}).items()}
    snap.update(sweep=dataclasses.asdict(sweep),
                model={k: v for k, v in dataclasses.asdict(model_cfg).items()
                       if k not in ("depth", "shortcut", "family")},
                train={**dataclasses.asdict(train), "storage_path": display(train.storage_path)})
    return snap


def open_parent(uri: str, sweep: SweepConfig, train: TrainConfig, trials: list[Trial], params: dict[str, Any],
                digest: str) -> str:
    """The id of the sweep's parent run: the one of the same name and digest, else a new one."""
    from resnet_pipeline.training.driver import environment_tags

    tags = {**environment_tags(train.workers), "sweep": sweep.name, "trials": str(len(trials)), "config_digest": digest}
    parent_id, previous = tracking.start_run(uri, train.experiment, sweep.name, params, tags, match_tag="config_digest")
    if previous == tracking.FINISHED:
        tracking.set_running(uri, parent_id)  # e.g. re-run with more seeds: the sweep is open again
    return parent_id


def pending(uri: str, parent_id: str, sweep: SweepConfig, trials: list[Trial]) -> list[dict[str, Any]]:
    """Record the grid on the parent run; the trials not yet done (as Tune's grid), the others counted."""
    tracking.log_dict(uri, parent_id, {"trials": [t.run_name() for t in trials]}, tracking.SWEEP_GRID)
    # Done: finished, or stopped by ASHA (its decision; a new scheduler, without the old one's rung
    # history, might let the trial run to the end).
    done = {r.info.run_name for r in tracking.child_runs(uri, parent_id) if r.info.status == tracking.FINISHED
            or (sweep.asha and r.info.status == tracking.KILLED and r.data.tags.get(STOPPED_EARLY) == "true")}
    todo = [{**dataclasses.asdict(t), "run_name": t.run_name()} for t in trials if t.run_name() not in done]
    print(f"sweep '{sweep.name}' (MLflow run {parent_id}): {len(trials)} trials, "
          f"{len(trials) - len(todo)} already done, {len(todo)} to run")
    return todo


def close_trials(uri: str, parent_id: str, names: set[str], errors: dict[str, str], asha: bool) -> None:
    """End the child runs of the trials ``names`` that Tune left open."""
    # A trial of this run that ASHA stopped (no error) was interrupted, not failed: its run
    # ended RUNNING (actor killed) or FAILED (the stop reached the trainer) and becomes KILLED.
    # Any other run left RUNNING belongs to a trial that died (e.g. its process was killed).
    for r in tracking.child_runs(uri, parent_id):
        if r.info.run_name not in names or r.info.status not in (tracking.RUNNING, tracking.FAILED):
            continue
        if asha and r.info.run_name not in errors:
            tracking.set_tags(uri, r.info.run_id, {STOPPED_EARLY: "true"})
            tracking.end_run(uri, r.info.run_id, tracking.KILLED)
        elif r.info.status == tracking.RUNNING:
            tracking.end_run(uri, r.info.run_id, tracking.FAILED)


def end_running(uri: str, parent_id: str, status: str) -> None:
    """On an interrupt or error: the trials still running die with Ray; their runs end (KILLED when
    interrupted) and resume by name next time."""
    for r in tracking.child_runs(uri, parent_id):
        if r.info.status == tracking.RUNNING:
            tracking.end_run(uri, r.info.run_id, status)


def incomplete(summary: dict[str, Any], asha: bool) -> list[str]:
    """The trials of the summary that did not end as they should, as ``A-8 seed 0: FAILED``."""
    # With ASHA, trials it stopped early (KILLED) are the scheduler's decision, not a failure.
    ok = {tracking.FINISHED, tracking.KILLED} if asha else {tracking.FINISHED}
    return [f"{r['shortcut']}-{r['depth']} seed {r['seed']}: {r['status']}"
            for r in summary["trials"] if r["status"] not in ok]
