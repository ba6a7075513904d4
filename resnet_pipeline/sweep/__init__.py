"""Ray Tune over depth x shortcut x seed: one MLflow parent run, one child run per trial.

Each trial is a training run (`training.driver.train`) in a Tune trial process. A trial of one worker trains in that
process and reports to Tune directly; a trial of several workers runs a Ray Train TorchTrainer with
`TuneReportCallback` (`sweep.trial_launcher`). Everything is validated before Ray starts. Trials are named by net and
seed (`resnet56-A-s0`) under the sweep's parent run, which carries the sweep's name and a digest of everything that
shapes the results (the train, model and data settings) as tags; the checkpoints go under
`<storage>/<sweep>-<digest>/`. Re-running the same sweep reopens that parent, skips its finished trials and resumes
its unfinished ones from their checkpoints; a changed parameter trains anew instead of reusing old runs.

    config.py     SweepConfig (params.yaml's `sweep`) and Trial
    planning.py   the trials, the digest of what shapes their results, the --dry-run estimate
    resources.py  trials at once, and each one's CPUs, GPUs and threads
    tune.py       the Tune trial function and the Tuner (Ray imported here only)
    runs.py       the parent and child MLflow runs: reopen, skip what is done, close what Tune left open
    summary.py    the table read back from MLflow, mean ± std over seeds, summary.json/csv
    run.py        run_sweep, the steps above in order
"""

from resnet_pipeline.sweep.config import SweepConfig, Trial
from resnet_pipeline.sweep.planning import config_digest, dry_run, plan
from resnet_pipeline.sweep.run import run_sweep
from resnet_pipeline.sweep.summary import write_summary

__all__ = ["SweepConfig", "Trial", "config_digest", "dry_run", "plan", "run_sweep", "write_summary"]
