"""`run_sweep`: plan, open the parent run, run what is not done on Tune, close the runs, summarize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_pipeline.models import ModelConfig
from resnet_pipeline.sweep.config import SweepConfig, Trial, trial_model
from resnet_pipeline.sweep.planning import config_digest, data_shape, plan, shaping_data
from resnet_pipeline.sweep.summary import log_to_parent, summarize, write_summary
from resnet_pipeline.training.config import TrainConfig


def _checked(sweep: SweepConfig, train: TrainConfig, model_cfg: ModelConfig,
             data_dir: str | Path) -> tuple[TrainConfig, list[Trial], Path]:
    """The resolved train settings, the trials and the data folder, all checked before Ray starts."""
    from resnet_pipeline.training.driver import check_data_dir, resolve_workers
    from resnet_pipeline.training.ray_launch import check_local_capacity

    train.validate()
    train = resolve_workers(train)
    trials = plan(sweep, train)
    for t in trials:
        trial_model(model_cfg, t).validate()
    data_path = check_data_dir(data_dir)
    train = train.for_data(data_path)  # auto experiment and storage names, from the data folder
    check_local_capacity(train.workers, train.use_gpu)
    return train, trials, data_path


def run_sweep(sweep: SweepConfig, train: TrainConfig, model_cfg: ModelConfig, data_dir: str | Path, *,
              backend: str = "auto", normalize: str = "auto", num_threads: int = 2, aug: dict[str, Any] | None = None,
              tracking_uri: str | None = None, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    from resnet_pipeline import tracking
    import resnet_pipeline.sweep.runs as runs
    from resnet_pipeline.sweep.tune import run_tune, trial_base
    from resnet_pipeline.training.driver import resolve_storage

    train, trials, data_path = _checked(sweep, train, model_cfg, data_dir)
    num_classes, input_size, kind = data_shape(data_path, aug)
    storage = resolve_storage(train.storage_path)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    params = runs.parent_params(snapshot, sweep, model_cfg, train)
    digest = config_digest(train, model_cfg, shaping_data(data_path, backend, normalize, aug, kind))
    parent_id = runs.open_parent(uri, sweep, train, trials, params, digest)
    status = tracking.FAILED
    try:
        todo = runs.pending(uri, parent_id, sweep, trials)
        errors: dict[str, str] = {}
        if todo:
            base = trial_base(sweep, train, model_cfg, data_path, storage, digest, backend=backend, normalize=normalize,
                              num_threads=num_threads, aug=aug, uri=uri, parent_id=parent_id, snapshot=params)
            errors = run_tune(todo, base, sweep, train, storage)
            runs.close_trials(uri, parent_id, {t["run_name"] for t in todo}, errors, sweep.asha)
        summary = summarize(uri, parent_id, sweep, digest, trials, model_cfg, num_classes, input_size)
        log_to_parent(uri, parent_id, summary, train.iterations)
        out = write_summary(summary, Path(sweep.out))
        tracking.log_artifacts(uri, parent_id, out, "summary")
        for name, e in errors.items():
            print(f"trial {name} failed: {e}")
        incomplete = runs.incomplete(summary, sweep.asha)
        status = tracking.FINISHED if not errors and not incomplete else tracking.FAILED
        return {**summary, "parent_run_id": parent_id, "tracking_uri": uri, "errors": list(errors.values()),
                "incomplete": incomplete, "out": str(out)}
    except BaseException as exc:
        status = tracking.KILLED if isinstance(exc, KeyboardInterrupt) else tracking.FAILED
        runs.end_running(uri, parent_id, status)
        raise
    finally:
        tracking.end_run(uri, parent_id, status)
