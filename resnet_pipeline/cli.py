"""Command-line interface: a thin click layer. Parse, load config, call one library function.

Heavy libraries (torch, Ray, MLflow, DALI) are imported inside the commands so that `--help`
is instant and a bad flag fails before anything expensive starts.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from resnet_pipeline.bench.cli import bench
from resnet_pipeline.config import ConfigError, apply_sets, load_params, load_section
from resnet_pipeline.console import (console, duration, int_list, json_only_on_stdout, params_option, print_rows,
                                     str_list)


class _Group(click.Group):
    """Turn our ConfigError into a one-line message and exit code 2, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc


def set_option(f):
    """``-S section.key=value``, repeatable: override any params key (DVC's -S; the value is YAML)."""
    return click.option("-S", "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override any params key, e.g. -S train.iterations=2000 -S data.normalize=per_channel; "
                             "repeat for several (the value is read as YAML).")(f)


def _params(params_file: str | None, sets: tuple[str, ...]) -> dict:
    """The params file with the -S overrides applied."""
    return apply_sets(load_params(params_file), sets)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproduce 'Deep Residual Learning for Image Recognition' (He et al. 2015)."""
    # Before torch is imported: an OpenMP runtime started without OMP_NUM_THREADS spins its idle
    # threads against DALI's decoder threads. A ResNet-20 training step in this process ran at
    # 71 img/s without it and 326 img/s with it on 2 cores (docs/benchmarks.md). Ray sets it in its
    # workers too. The training loop then sets torch's threads explicitly (train.threads_per_worker).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A job submitted to a cluster runs in Ray's copy of the code; its relative paths (params, data,
    # results) mean the project folder that `submit` names.
    project = os.environ.get("RESNET_PROJECT_DIR")
    if project:
        if not os.path.isdir(project):
            raise click.UsageError(f"RESNET_PROJECT_DIR={project}: no such folder on this node; give the project "
                                   "folder as every node sees it (python cli.py submit --project-dir)")
        os.chdir(project)


@main.command()
@click.option("--family", type=click.Choice(["cifar", "imagenet"]), default=None,
              help="Only one model family (default: both).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(family: str | None, as_json: bool) -> None:
    """Parameter counts and multiply-adds of every depth x shortcut (x variant)."""
    from resnet_pipeline.models import zoo_table

    rows = zoo_table(family)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="ResNet model zoo (computed from the modules)")
    for col in ("family", "depth", "shortcut", "variant", "input", "params", "mult-adds"):
        table.add_column(col, justify="right" if col in ("depth", "input", "params", "mult-adds") else "left")
    for r in rows:
        table.add_row(r["family"], str(r["depth"]), r["shortcut"], r.get("variant") or "-",
                      f"{r['input_size']}x{r['input_size']}", f"{r['params']:,}", f"{r['mult_adds'] / 1e9:.3f}G")
    console().print(table)


@main.command()
@params_option("Params file (default: params.yaml); its `data` section gives the defaults.")
@click.option("--dataset", type=click.Choice(["cifar10", "imagefolder", "demo"]), default=None,
              help="Override data.dataset.")
@click.option("--source", default=None, help="Override data.source: a URL, an archive or a folder.")
@click.option("--out", default=None, help="Override data.out (default data/prepared/<dataset>).")
@set_option
def prepare(params_file: str | None, dataset: str | None, source: str | None, out: str | None,
            sets: tuple[str, ...]) -> None:
    """Acquire, validate and split a dataset into a folder the loaders read (the first DVC stage)."""
    from resnet_pipeline.data import load_data_config, prepare as run_prepare
    from resnet_pipeline.data.prepare import summary

    cfg = load_data_config(_params(params_file, sets), dataset=dataset, source=source, out=out)
    click.echo(summary(run_prepare(cfg), cfg.out_dir))


@main.command()
@params_option("Params file (default: params.yaml): its `train`, `model` and `data` sections.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--depth", type=int, default=None, help="Override model.depth (CIFAR 6n+2, or 18/34/50/101/152).")
@click.option("--shortcut", type=click.Choice(["plain", "A", "B", "C"]), default=None, help="Override model.shortcut.")
@click.option("--iterations", type=int, default=None, help="Override train.iterations.")
@click.option("--batch-size", type=int, default=None, help="Override train.batch_size (global).")
@click.option("--workers", type=int, default=None, help="Override train.workers (data-parallel processes).")
@click.option("--lr", type=float, default=None, help="Override train.lr.")
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--run-name", default=None, help="Run name; the same name again resumes an unfinished run.")
@click.option("--experiment", default=None, help="Override train.experiment (the MLflow experiment).")
@click.option("--storage-path", default=None, help="Override train.storage_path (checkpoints, Ray results): a folder "
                                                   "or s3://bucket/prefix; on several nodes, one all see.")
@set_option
def train(params_file: str | None, data_dir: str | None, depth: int | None, shortcut: str | None,
          iterations: int | None, batch_size: int | None, workers: int | None, lr: float | None, seed: int | None,
          run_name: str | None, experiment: str | None, storage_path: str | None, sets: tuple[str, ...]) -> None:
    """Train one ResNet with Ray Train (the paper's recipe from params.yaml), tracked in MLflow."""
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.models import ModelConfig
    from resnet_pipeline.training.config import TrainConfig
    from resnet_pipeline.training.driver import train as run_train

    params = _params(params_file, sets)
    data_cfg = load_data_config(params)
    model_cfg = load_section(ModelConfig, "model", params, depth=depth, shortcut=shortcut)
    train_cfg = load_section(TrainConfig, "train", params, iterations=iterations, batch_size=batch_size,
                             workers=workers, lr=lr, seed=seed, run_name=run_name, experiment=experiment,
                             storage_path=storage_path)
    summary = run_train(train_cfg, model_cfg, data_dir or data_cfg.out_dir, backend=data_cfg.backend,
                        normalize=data_cfg.normalize, num_threads=data_cfg.num_threads, aug=data_cfg.aug,
                        snapshot={"train": train_cfg, "model": model_cfg, "data": data_cfg})
    m = summary["metrics"]
    click.echo(f"run {summary['run_name']} ({summary['run_id']}): "
               + ", ".join(f"{k} {m[k]:.2%}" for k in ("train_error", "best_val_error", "test_error") if k in m))


@main.command()
@params_option("Params file (default: params.yaml): its `sweep`, `train`, `model` and `data` sections.")
@click.option("--data", "data_dir", default=None, help="Prepared dataset folder (default: data.out).")
@click.option("--depths", default=None, help="Comma-separated depths, e.g. 20,32,44,56,110 or 18,34,50,101,152.")
@click.option("--shortcuts", default=None, help="Comma-separated shortcuts from plain,A,B,C.")
@click.option("--include", default=None, help="Nets beyond the grid, e.g. B-50,C-34 (overrides sweep.include).")
@click.option("--seeds", type=int, default=None, help="Seeds per (depth, shortcut).")
@click.option("--iterations", type=int, default=None, help="Override train.iterations for every trial.")
@click.option("--name", default=None, help="Sweep name; the same name again resumes the sweep.")
@click.option("--max-concurrent", type=click.IntRange(min=0), default=None,
              help="Trials at once (default: sweep.max_concurrent; 0: as many as the cluster allows).")
@click.option("--asha/--no-asha", default=None, help="ASHA early stopping on validation error.")
@click.option("--trial-launcher", type=click.Choice(["auto", "in-trial", "ray-train"]), default=None,
              help="Train in the Tune trial's process (one worker) or on a Ray Train worker group; auto: in-trial for "
                   "one worker.")
@click.option("--storage-path", default=None, help="Override train.storage_path (checkpoints, Ray results): a folder "
                                                   "or s3://bucket/prefix; on several nodes, one all see.")
@click.option("--dry-run", is_flag=True, help="List the trials and estimate their compute; train nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or dry run) as JSON.")
@set_option
def sweep(params_file: str | None, data_dir: str | None, depths: str | None, shortcuts: str | None,
          include: str | None, seeds: int | None, iterations: int | None, name: str | None,
          max_concurrent: int | None, asha: bool | None, trial_launcher: str | None, storage_path: str | None,
          dry_run: bool, as_json: bool, sets: tuple[str, ...]) -> None:
    """Ray Tune over depth x shortcut x seed, one MLflow child run per trial under a parent run."""
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.models import ModelConfig
    from resnet_pipeline.sweep import SweepConfig, dry_run as run_dry, run_sweep
    from resnet_pipeline.training.config import TrainConfig

    params = _params(params_file, sets)
    data_cfg = load_data_config(params)
    sweep_cfg = load_section(SweepConfig, "sweep", params, depths=int_list(depths, "--depths"),
                             shortcuts=str_list(shortcuts), include=str_list(include), seeds=seeds, name=name,
                             max_concurrent=max_concurrent, asha=asha, trial_launcher=trial_launcher)
    model_cfg = load_section(ModelConfig, "model", params)
    train_cfg = load_section(TrainConfig, "train", params, iterations=iterations, storage_path=storage_path)
    data = data_dir or data_cfg.out_dir
    if dry_run:
        with json_only_on_stdout(as_json):
            report = run_dry(sweep_cfg, train_cfg, model_cfg, data, aug=data_cfg.aug, data=data_cfg)
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        print_rows(f"Sweep '{sweep_cfg.name}': {len(report['trials'])} trials of {train_cfg.iterations:,} iterations "
                   f"(dry run; {report['num_classes']} classes, {report['input_size']} px inputs, from "
                   f"{report['shape_from']}; training measured at {report['calibration_mult_adds_per_s'] / 1e9:.1f} "
                   f"G mult-adds/s on this machine)", report["trials"],
                   ("depth", "shortcut", "seed", "params", "mult_adds", "train_mult_adds", "estimated_s"))
        click.echo(f"estimated total: {duration(report['estimated_total_s_one_process'])} in one process on this "
                   f"machine (mult-adds per image x 3 for the backward pass x images, at the measured rate)")
        return
    with json_only_on_stdout(as_json):
        summary = run_sweep(sweep_cfg, train_cfg, model_cfg, data, backend=data_cfg.backend,
                            normalize=data_cfg.normalize, num_threads=data_cfg.num_threads, aug=data_cfg.aug,
                            snapshot={"data": data_cfg})
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_sweep(summary)
    # Non-zero: a DVC stage must not look complete while trials are missing.
    if summary["errors"] or summary["incomplete"]:
        not_done = summary["incomplete"] or [f"{len(summary['errors'])} trial(s) raised an error"]
        raise click.ClickException(f"sweep not complete ({'; '.join(not_done)}); re-run the same command to resume")


def _print_sweep(summary: dict) -> None:
    print_rows(f"Sweep '{summary['sweep']}' (MLflow parent run {summary['parent_run_id']})", summary["trials"],
               ("depth", "shortcut", "seed", "status", "train_error", "val_error", "test_error", "params",
                "wall_time_s", "images_per_s"))
    print_rows("Mean +- std over seeds", summary["aggregate"],
               ("depth", "shortcut", "seeds", "train_error_mean", "train_error_std", "val_error_mean",
                "val_error_std", "test_error_mean", "test_error_std"))
    click.echo(f"summary: {summary['out']}/summary.json, summary.csv")


@main.command()
@params_option("Params file (default: params.yaml): its `evaluate`, `data`, `train` and `sweep` sections.")
@click.option("--sweep", "sweep_name", default=None,
              help="Sweep whose finished trials to evaluate (default: sweep.name).")
@click.option("--run", "run_ids", multiple=True,
              help="An MLflow run id to evaluate instead of a sweep; repeat for several.")
@click.option("--data", "data_dir", default=None,
              help="Prepared dataset folder (default: the one the runs trained on, else data.out).")
@click.option("--register/--no-register", default=None, help="Override evaluate.register (the MLflow model registry).")
@set_option
def evaluate(params_file: str | None, sweep_name: str | None, run_ids: tuple[str, ...], data_dir: str | None,
             register: bool | None, sets: tuple[str, ...]) -> None:
    """Test error (top-1/top-5, 10-crop on ImageNet-kind data) of each trained model beside the paper's,
    the degradation check, Figures 6 and 7; metrics/ JSON, plots, MLflow runs and model registry."""
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.evaluation import load_evaluate_config
    from resnet_pipeline.evaluation.evaluate import run_evaluation
    from resnet_pipeline.models import net_label
    from resnet_pipeline.sweep import SweepConfig
    from resnet_pipeline.training.config import TrainConfig

    if sweep_name and run_ids:
        raise click.UsageError("give --sweep or --run, not both")
    params = _params(params_file, sets)
    data_cfg = load_data_config(params)
    cfg = load_evaluate_config(params, register=register)
    experiment = load_section(TrainConfig, "train", params).experiment
    sweep_name = None if run_ids else sweep_name or load_section(SweepConfig, "sweep", params).name
    summary = run_evaluation(cfg, data_dir, experiment=experiment, sweep=sweep_name, run_ids=run_ids,
                             backend=data_cfg.backend, normalize=data_cfg.normalize, num_threads=data_cfg.num_threads,
                             aug=data_cfg.aug, default_data=data_cfg.out_dir)
    mean_std = {"top-1": "top1_error", "top-5": "top5_error", "val": "val_error", "train": "train_error"}
    rows = [{"net": net_label(e["depth"], e["shortcut"]), "n": e["runs"], "paper": _pct_pm(e["paper_top1_error"]),
             "diff": _pct_pm(e["diff_top1_error"]),
             **{col: _pct_pm(e[f"{k}_mean"], e[f"{k}_std"]) for col, k in mean_std.items()}} for e in summary.table]
    paper = ("paper", "diff") if any(e["paper_top1_error"] is not None for e in summary.table) else ()
    top5 = ("top-5",) if any(e["top5_error_mean"] is not None for e in summary.table) else ()
    print_rows(f"Errors (%) on {summary.compared} beside the paper, mean +- std over seeds", rows,
               ("net", "n", "top-1", *paper, *top5, "val", "train"))
    for check in summary.degradation:
        click.echo(f"degradation check: {check['answer']}")


def _pct_pm(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f"±{100 * std:.2f}" if std else "")


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_uri", default=None,
              help="MLflow model URI, e.g. models:/resnet-cifar10@champion, models:/m-<logged model id> or "
                   "runs:/<run id>/<net, e.g. resnet20-A> (default: the dataset's champion).")
@params_option("Params file (default: params.yaml): evaluate.registry_name and data.dataset name the champion.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def predict(images: tuple[str, ...], model_uri: str | None, params_file: str | None, as_json: bool) -> None:
    """Top-5 classes, with probabilities, of each image file, preprocessed exactly as in evaluation."""
    from resnet_pipeline.data import load_data_config
    from resnet_pipeline.evaluation import load_evaluate_config
    from resnet_pipeline.evaluation.predict import champion_uri, predict as run_predict

    params = load_params(params_file)
    cfg = load_evaluate_config(params)
    default = champion_uri(cfg.resolved_registry_name(load_data_config(params).out_dir))
    results = run_predict(images, model_uri or default)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(r["image"])
        for t in r["top"]:
            click.echo(f"  {t['probability']:7.2%}  {t['class']}")


@main.command()
@params_option("Params file (default: params.yaml): its `evaluate` section.")
@click.option("--sweep", "sweep_name", default=None,
              help="Sweep to report; must be the one last evaluated (default: that one).")
def report(params_file: str | None, sweep_name: str | None) -> None:
    """reports/<sweep>/report.md and report.html from the evaluation, logged to the sweep's MLflow run."""
    from resnet_pipeline.evaluation import load_evaluate_config
    from resnet_pipeline.evaluation.summary import EvaluationSummary
    from resnet_pipeline.models import net_label
    from resnet_pipeline.report.build import build_report
    from resnet_pipeline.tracking import resolve_tracking_uri

    dest = build_report(load_evaluate_config(params_file), sweep=sweep_name, params_file=params_file)
    summary = EvaluationSummary.from_json(json.loads((dest / "evaluation.json").read_text()))
    click.echo(f"\nreport: {dest / 'report.html'} (and report.md)")
    measured = {"test": "test error", "val": "val error", "val_10crop": "val error (10-crop)",
                "test_10crop": "test error (10-crop)"}.get(summary.compared, f"{summary.compared} error")
    for e in summary.table:
        net = net_label(e["depth"], e["shortcut"], "legend")
        click.echo(f"  {net:<18} {measured} {_pct_pm(e['top1_error_mean'], e['top1_error_std'])}%  "
                   f"training error {_pct_pm(e['train_error_mean'], e['train_error_std'])}%")
    for check in summary.degradation:
        click.echo(f"  degradation check: {check['answer']}")
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {resolve_tracking_uri()}  "
               "(then http://127.0.0.1:5000/#/experiments?workflowType=machine_learning)")


main.add_command(bench)


@main.group()
@click.option("--state-dir", type=click.Path(file_okay=False), default=".cluster", show_default=True,
              help="Where `up` records the PIDs it starts, the logs and the default tracking store.")
@click.pass_context
def cluster(ctx: click.Context, state_dir: str) -> None:
    """A one-machine Ray cluster (head + MLflow tracking server): up, status, env, logs, down."""
    ctx.obj = Path(state_dir).resolve()


@cluster.command("up")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface of the Ray dashboard (job submission); 0.0.0.0 to take jobs from other machines.")
@click.option("--mlflow-host", default="127.0.0.1", show_default=True,
              help="Interface of the MLflow server; on several nodes, one the workers reach.")
@click.option("--num-cpus", type=int, default=None, help="Logical CPUs of the head (default: max(cores, 4)).")
@click.option("--port", type=int, default=6379, show_default=True, help="Ray GCS port (workers join here).")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Ray dashboard / job port.")
@click.option("--mlflow-port", type=int, default=5000, show_default=True, help="MLflow server port.")
@click.option("--backend-store-uri", default=None,
              help="MLflow's database (default: sqlite in the state folder), e.g. postgresql://...")
@click.option("--artifacts-destination", default=None,
              help="Where the server stores artifacts (default: mlartifacts/ in the state folder), e.g. s3://...")
@click.pass_obj
def cluster_up(state_dir, host: str, mlflow_host: str, num_cpus: int | None, port: int, dashboard_port: int,
               mlflow_port: int, backend_store_uri: str | None, artifacts_destination: str | None) -> None:
    """Start `ray start --head --block` and `mlflow server` in the background, token auth on."""
    from resnet_pipeline import cluster as cl

    state = cl.up(state_dir, host=host, mlflow_host=mlflow_host, num_cpus=num_cpus, port=port,
                  dashboard_port=dashboard_port, mlflow_port=mlflow_port, backend_store_uri=backend_store_uri,
                  artifacts_destination=artifacts_destination)
    p = state["processes"]
    click.echo(f"Ray head (PID {p['ray']['pid']}): dashboard {state['dashboard']}, workers join <this host>:{port}\n"
               f"MLflow server (PID {p['mlflow']['pid']}): {state['tracking_uri']}\n"
               f"token: {state['token_path']} (RAY_AUTH_TOKEN_PATH; `ray get-auth-token` prints it)\n"
               f"state and logs: {state_dir}\n"
               f"next: python cli.py submit -- python cli.py sweep ...   or   eval \"$(python cli.py cluster env)\"")


@cluster.command("down")
@click.pass_obj
def cluster_down(state_dir) -> None:
    """Stop exactly the processes `up` started (by recorded PID), and their children."""
    from resnet_pipeline import cluster as cl

    pids = cl.down(state_dir)
    click.echo(f"stopped {len(pids)} process(es)" if pids else f"nothing recorded as running in {state_dir}")


@cluster.command("status")
@click.pass_obj
def cluster_status(state_dir) -> None:
    """Whether the recorded head and tracking server run, and their addresses."""
    from resnet_pipeline import cluster as cl

    click.echo(json.dumps(cl.status(state_dir), indent=2))


@cluster.command("env")
@click.option("--address", default=None, help="Dashboard URL of a head started elsewhere, e.g. http://HEAD:8265.")
@click.pass_obj
def cluster_env(state_dir, address: str | None) -> None:
    """Shell exports for plain `ray job submit` and MLflow clients: eval "$(python cli.py cluster env)"."""
    from resnet_pipeline import cluster as cl

    for k, v in cl.client_env(state_dir, address).items():
        click.echo(f"export {k}={shlex.quote(v)}")


@cluster.command("logs")
@click.argument("job_id", required=False)
@click.option("--follow", is_flag=True, help="Stream until the job ends.")
@click.option("--address", default=None,
              help="Dashboard URL (default: the recorded head, else $RAY_API_SERVER_ADDRESS).")
@click.pass_obj
def cluster_logs(state_dir, job_id: str | None, follow: bool, address: str | None) -> None:
    """A job's logs (default: the last one submitted from here)."""
    from resnet_pipeline import cluster as cl

    sys.exit(cl.job_command("logs", job_id, state_dir=state_dir, address=address, follow=follow))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--address", default=None,
              help="Head dashboard URL, e.g. http://HEAD:8265 (default: `cluster up`'s, else $RAY_API_SERVER_ADDRESS).")
@click.option("--tracking-uri", default=None,
              help="MLflow URI for the job (default: `cluster up`'s server, else $MLFLOW_TRACKING_URI).")
@click.option("--project-dir", default=None,
              help="Absolute folder where the job's relative paths resolve (default: here); on several nodes, shared.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Stream the job's logs until it ends.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=".cluster", show_default=True,
              help="State folder of `cluster up`.")
def submit(command: tuple[str, ...], address: str | None, tracking_uri: str | None, project_dir: str | None,
           wait: bool, state_dir: str) -> None:
    """Run COMMAND on the Ray cluster with `ray job submit`: this checkout as the working dir (less
    .rayignore), the tracking URI and project folder as env_vars. E.g. submit -- python cli.py sweep"""
    from resnet_pipeline import cluster as cl

    job_id, rc = cl.submit(list(command), state_dir=Path(state_dir), address=address, tracking_uri=tracking_uri,
                           project_dir=project_dir, wait=wait)
    if not wait and rc == 0:
        click.echo(f"job {job_id}; follow it: python cli.py cluster logs --follow")
    sys.exit(rc)


if __name__ == "__main__":
    sys.exit(main())
